"""The web app of one bundle: a JSON API, its docs at /docs, and a page at / that needs no internet.

    GET  /          the page: the model's classes and links to the API; drop, pick or paste an image;
                    bars, Grad-CAM overlay, look-alikes
    GET  /docs      the API reference, built from /openapi.json, with nothing fetched from a CDN (serve.docs)
    GET  /health    liveness
    GET  /model     classes, input size, task, validation metrics, limits
    POST /predict   one or many images (multipart) -> top-k scores per image, multi-label and 'unknown' aware
    POST /explain   one image -> PNG panel, or JSON heat map and overlay, for a chosen method and class
    POST /similar   one image -> the most similar training images, with thumbnails

Bad input is always the client's 4xx, never a crash: 413 too large (bytes, files or pixels), 415 not
an image type, 422 an image that cannot be used (corrupt, decompression bomb) or bad parameters;
400 a Host header the server does not answer to (DNS rebinding). No message names a folder of the server.
"""
from __future__ import annotations

import base64
import re
from contextlib import asynccontextmanager
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal, Optional

from ..extras import require

require("serve", "fastapi")  # first: without the serve extra, one line naming it rather than a traceback
from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware

from .. import __version__
from ..data.images import UnreadableImage
from ..errors import ImgclsError
from ..explain.maps import Explanation, to_png
from ..explain.overlay import overlay
from .batching import Backend
from .config import ServeConfig
from .docs import DOCS_POLICY, docs_html
from .hosts import HostCheck
from .service import SERVED_METHODS, ModelService, TooManyPixels, load_models
from .uploads import read_uploads, upload_schema

# The page may load nothing from elsewhere: it works offline and cannot leak an upload.
PAGE_POLICY = "default-src 'none'; connect-src 'self'; img-src 'self' data: blob:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
# The folders of an absolute path (POSIX or Windows) in a message, not a URL's or a MIME type's slashes:
# library errors name files for a local user, and a client learns only the last part of each.
_FOLDERS = re.compile(r"(?<![\w:/.~-])/(?:[^\s'\"/]+/)+|\b[A-Za-z]:\\(?:[^\s'\"\\]+\\)+")


def create_app(bundle: str | Path, config: ServeConfig | None = None, device: str = "auto", engine: str = "auto",
               data_dir: str | Path | None = None, backend: Backend | None = None) -> FastAPI:
    """The app for `bundle` (a run folder or its model/ folder); the model is loaded once, here.

    Predictions run on `backend` if given, else on ONNX Runtime when the bundle has an export and
    `engine` allows it, else on PyTorch; explanations and look-alikes always use PyTorch.
    Look-alikes come from the run's training images, or from `data_dir`. Only the Host names in
    `config.allowed_hosts` are answered (any when empty), and only pages of `config.cors_origins`
    may read the answers."""
    config = config or ServeConfig()
    predictor, loaded = load_models(bundle, device, engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        async with ModelService(predictor, config, backend or loaded, data_dir) as service:
            app.state.service = service
            yield

    # FastAPI's /docs and /redoc fetch Swagger UI and ReDoc from a CDN: blank offline, so ours replaces them.
    app = FastAPI(title=f"imgcls: {predictor.config.architecture}", version=__version__, lifespan=lifespan,
                  description=f"Classifies images into {len(predictor.classes)} classes.", docs_url=None, redoc_url=None)
    app.add_api_route("/", page, methods=["GET"], include_in_schema=False)
    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/model", model, methods=["GET"])
    app.add_api_route("/predict", predict, methods=["POST"], openapi_extra=upload_schema(many=True))
    app.add_api_route("/explain", explain, methods=["POST"], openapi_extra=upload_schema(many=False),
                      responses={200: {"content": {"image/png": {}}, "description": "the panel (format=png) or JSON"}})
    app.add_api_route("/similar", similar, methods=["POST"], openapi_extra=upload_schema(many=False))
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_methods=["GET", "POST"])
    # Added last, so it runs first: a request for a foreign Host gets its 400 before anything else.
    app.add_middleware(HostCheck, allowed=config.allowed_hosts)
    app.add_exception_handler(ImgclsError, _user_error)
    app.add_exception_handler(TooManyPixels, _too_many_pixels)
    app.add_exception_handler(UnreadableImage, _unusable_image)
    app.add_exception_handler(Exception, _server_error)
    return app


async def page() -> HTMLResponse:
    return HTMLResponse(_page_html(), headers={"Content-Security-Policy": PAGE_POLICY})


@lru_cache(maxsize=1)
def _page_html() -> str:
    return resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")


async def docs(request: Request) -> HTMLResponse:
    return HTMLResponse(docs_html(request.app.openapi(), str(request.base_url)),
                        headers={"Content-Security-Policy": DOCS_POLICY})


async def health() -> dict:
    return {"status": "ok"}


async def model(request: Request) -> dict:
    """What the model is: classes in output order, input size, task, validation metrics; what this
    server offers: explanation methods, whether look-alikes are available (and if not, why), limits."""
    service = _service(request)
    bundle = service.predictor.config
    return {
        "architecture": bundle.architecture, "classes": bundle.classes, "img_size": bundle.img_size,
        "task": bundle.task, "thresholds": bundle.thresholds, "metrics": bundle.metrics,
        "imgcls_version": bundle.imgcls_version, "explain_methods": list(SERVED_METHODS),
        "similar": service.look_alikes is not None, "similar_note": _public(service.look_alikes_note),
        "limits": {"max_upload_mb": service.config.max_upload_mb, "max_files": service.config.max_files,
                   "max_megapixels": service.config.max_megapixels},
    }


async def predict(request: Request, top_k: int = Query(5, ge=1, le=1000),
                  unknown_below: Optional[float] = Query(None, ge=0, le=1,
                                                         description="answer 'unknown' when the top score is below this "
                                                                     "(default: the bundle's calibrated threshold, if any)")) -> dict:
    """Top-k classes with scores for each uploaded image (multipart field `files`, repeat it for several).

    Multi-label bundles return every label over its tuned threshold. An upload that is not a usable
    image gets an `error` and the others are still answered; 422 when none is usable."""
    service = _service(request)
    uploads = await read_uploads(request, service.config.max_upload_bytes, service.config.max_files)
    results = await service.predict(uploads, top_k, unknown_below)
    _raise_if_all_failed(results)
    return {"results": results}


async def explain(request: Request,
                  method: str = Query("gradcam", json_schema_extra={"enum": list(SERVED_METHODS)}),
                  class_name: Optional[str] = Query(None, description="the class to explain (default: the predicted one)"),
                  output: Literal["png", "json"] = Query("png", alias="format")):
    """Where the model looked in one uploaded image: the rendered panel as PNG, or as JSON the
    explained class, its score, the (H, W) heat map in [0, 1] (null for methods that draw no single
    map) and the overlay as a PNG data URL. Multi-label bundles explain every label that is on
    (the PNG shows the first)."""
    service = _service(request)
    uploads = await read_uploads(request, service.config.max_upload_bytes, max_files=1)
    explanations = await service.explain(uploads[0], method, class_name)
    if output == "png":
        return Response(to_png(explanations[0].panel), media_type="image/png")
    return {"method": method, "results": [_explanation_json(e) for e in explanations]}


def _explanation_json(item: Explanation) -> dict:
    picture = item.panel if item.heatmap is None else overlay(item.image, item.heatmap)
    return {"label": item.label, "score": round(item.score, 6),
            "heatmap": None if item.heatmap is None else item.heatmap.astype(float).round(4).tolist(),
            "overlay": "data:image/png;base64," + base64.b64encode(to_png(picture)).decode("ascii")}


async def similar(request: Request, k: int = Query(5, ge=1, le=50)) -> dict:
    """The k training images the model finds most like one uploaded image, best first, by cosine
    similarity of its penultimate features: label, score, path relative to the training folder and a
    small JPEG thumbnail (a data URL). 404 when this server has no training images to compare with."""
    service = _service(request)
    if service.look_alikes is None:
        raise HTTPException(404, f"{_public(service.look_alikes_note)}; restart the server with --data TRAIN_DIR")
    uploads = await read_uploads(request, service.config.max_upload_bytes, max_files=1)
    return {"results": await service.similar(uploads[0], k)}


def _service(request: Request) -> ModelService:
    return request.app.state.service


def _raise_if_all_failed(results: list[dict]) -> None:
    failed = [r for r in results if r["error"]]
    if failed and len(failed) == len(results):
        reasons = "; ".join(f"{r['filename']!r}: {r['error']}" for r in failed)
        raise HTTPException(422, f"not a usable image: {reasons}" if len(failed) == 1
                            else f"none of the {len(failed)} uploads is a usable image: {reasons}")


def _public(message: str | None) -> str | None:
    """`message` with every absolute path cut to its last part: '/home/ann/data/train' -> 'train'."""
    return None if message is None else _FOLDERS.sub("", message)


async def _user_error(request: Request, err: ImgclsError) -> JSONResponse:
    return JSONResponse({"detail": _public(str(err))}, status_code=422)


async def _too_many_pixels(request: Request, err: TooManyPixels) -> JSONResponse:
    return JSONResponse({"detail": str(err)}, status_code=413)


async def _unusable_image(request: Request, err: UnreadableImage) -> JSONResponse:
    return JSONResponse({"detail": f"not a usable image: {err}"}, status_code=422)


async def _server_error(request: Request, err: Exception) -> JSONResponse:
    # Starlette re-raises `err` after this response is sent, so the server logs the traceback once.
    return JSONResponse({"detail": f"internal error ({type(err).__name__}); the server log has the details"}, status_code=500)
