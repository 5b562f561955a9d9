"""The review page of `imgcls audit DATA --labels`: one self-contained HTML file where a person looks at each
suspect image beside look-alikes of its given and suggested class, decides keep / relabel / drop, and saves the
decisions as decisions.csv for `imgcls train DATA --manifest`. The user's files are never moved or deleted.

The page fetches nothing: every image is an embedded JPEG thumbnail, the report's data is a JSON blob the page's
script renders as text (never as HTML), and its Content-Security-Policy forbids loading anything else.
The template is review_page.html beside this file.
"""
from __future__ import annotations

import base64
import io
import json
import logging
from functools import lru_cache
from importlib import resources
from pathlib import Path

from PIL import Image

from ..data.images import UnreadableImage, decode_image, open_image
from ..fileio import atomic_write

log = logging.getLogger(__name__)

THUMBNAIL_SIDE_PX = 128  # enough to judge a label; ~4 KB each, so 300 cards with 10 look-alikes stay under ~15 MB
JPEG_QUALITY = 80
TEMPLATE = "review_page.html"
DATA_SLOT = "__REVIEW_DATA__"  # where the template takes the page's JSON
SECTIONS = ("label_issues", "outliers", "quality")  # the report's lists, in the order the cards follow


def _reason(section: str, suspect: dict) -> str:
    if section == "label_issues":
        return f"label issue: looks like {suspect['suggested']} (score {suspect['score']:.2f})"
    if section == "outliers":
        return f"outlier ({suspect['score']:.2f})"
    return "quality: " + ", ".join(suspect["problems"])


def _merge_suspects(report: dict) -> list[dict]:
    """One entry per image, in the order of the first list it is in, most suspicious first within each list;
    an image in several lists (a label issue that is also blurry) gathers every reason on one card."""
    merged: dict[str, dict] = {}
    for section in SECTIONS:
        for suspect in sorted(report.get(section, []), key=lambda suspect: suspect["score"], reverse=True):
            entry = merged.setdefault(suspect["path"], {**suspect, "reasons": [], "lookalikes": {}})
            entry["reasons"].append(_reason(section, suspect))
            entry["suggested"] = entry.get("suggested") or suspect.get("suggested")
            for side, paths in suspect.get("lookalikes", {}).items():
                entry["lookalikes"][side] = entry["lookalikes"].get(side) or paths
    return list(merged.values())


def _relative(path: str, root: str) -> str:
    """As the manifest spells it: relative to the data folder with '/' separators (absolute if outside it)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()


def _jpeg_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@lru_cache(maxsize=1)
def _placeholder_uri() -> str:
    """The grey square shown for a file that cannot be read, so its card still shows."""
    return _jpeg_uri(Image.new("RGB", (THUMBNAIL_SIDE_PX, THUMBNAIL_SIDE_PX), (200, 203, 210)))


def _thumbnail_uri(path: str) -> str | None:
    """A JPEG data: URI with the longest side THUMBNAIL_SIDE_PX, or None when the file cannot be read."""
    try:
        with open_image(path) as image:
            # JPEG only (a no-op otherwise): decode at 1/2 to 1/8 scale, a multiple faster for camera photos
            image.draft("RGB", (2 * THUMBNAIL_SIDE_PX, 2 * THUMBNAIL_SIDE_PX))
            thumbnail = Image.fromarray(decode_image(image))
    except (UnreadableImage, OSError) as err:
        log.debug("cannot read %s for the review page: %s", path, err)
        return None
    thumbnail.thumbnail((THUMBNAIL_SIDE_PX, THUMBNAIL_SIDE_PX))
    return _jpeg_uri(thumbnail)


class _Thumbnails:
    """Every image of the page once, however many cards show it; cards refer to them by index."""

    def __init__(self):
        self.uris: list[str | None] = []
        self._index: dict[str, int] = {}

    def index(self, path: str) -> int:
        if path not in self._index:
            self._index[path] = len(self.uris)
            self.uris.append(_thumbnail_uri(path))
        return self._index[path]


def _card(suspect: dict, root: str, thumbnails: _Thumbnails) -> dict:
    def lookalikes(side: str) -> list[dict]:
        return [{"path": _relative(path, root), "image": thumbnails.index(path)}
                for path in suspect["lookalikes"].get(side, [])]

    return {"path": _relative(suspect["path"], root), "split": suspect.get("split", ""),
            "given": suspect["given"], "suggested": suspect["suggested"], "reasons": suspect["reasons"],
            "image": thumbnails.index(suspect["path"]),
            "lookalikes": {"given": lookalikes("given"), "suggested": lookalikes("suggested")}}


def _script_json(data: dict) -> str:
    """JSON safe inside a <script> element: no '<' at all, so neither '</script>' nor '<!--' can end it early."""
    return json.dumps(data, ensure_ascii=False).replace("<", "\\u003c")


def write_review_page(report: dict, path: str | Path, max_items: int = 300) -> Path:
    """Write the review page of an audit report to `path` (atomically) and return it.

    Cards follow the report: label issues, then outliers, then quality problems, at most `max_items` of them;
    the page says how many more the JSON report holds.
    """
    if max_items < 0:
        raise ValueError(f"max_items must be 0 or more, got {max_items}")
    suspects = _merge_suspects(report)
    root = str(report["root"])
    thumbnails = _Thumbnails()
    cards = [_card(suspect, root, thumbnails) for suspect in suspects[:max_items]]
    unreadable = thumbnails.uris.count(None)
    if unreadable:
        log.warning("%d image(s) could not be read; the review page shows them as grey squares", unreadable)
    data = {"root": root, "classes": list(report["classes"]), "cards": cards,
            "not_shown": len(suspects) - len(cards), "images": thumbnails.uris, "placeholder": _placeholder_uri()}
    template = resources.files(__package__).joinpath(TEMPLATE).read_text(encoding="utf-8")
    html = template.replace(DATA_SLOT, _script_json(data))
    return atomic_write(path, lambda tmp: Path(tmp).write_text(html, encoding="utf-8"))
