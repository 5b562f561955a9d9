"""Reading uploaded images out of a multipart request: in memory, within a size limit, names never used as paths.

Starlette's own form parsing spools every upload over 1 MB to a temporary file on disk; the same
parser is used here with the spool as large as the request limit, so nothing is ever written.
The body is counted while it streams in, so a client that hides its size (chunked encoding) or
lies about it still gets its 413 after at most the limit is read, not after the whole body.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import AsyncIterator

from fastapi import HTTPException, Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

# Declared types worth decoding; the bytes are still checked, the declaration can only refuse.
ACCEPTED_TYPES = ("image/", "application/octet-stream")
MAX_FORM_FIELDS = 32  # non-file fields are ignored; a cap keeps a body of 100k empty fields cheap


@dataclass(frozen=True)
class Upload:
    name: str  # the client's file name: echoed back so it can match answers, never opened
    data: bytes


def upload_schema(many: bool) -> dict:
    """The request body that the OpenAPI docs (and /docs' "Try it out") show for an upload endpoint."""
    binary = {"type": "string", "format": "binary"}
    field, schema = ("files", {"type": "array", "items": binary}) if many else ("file", binary)
    body = {"type": "object", "required": [field], "properties": {field: schema}}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": body}}}}


async def read_uploads(request: Request, max_bytes: int, max_files: int) -> list[Upload]:
    """Every file part of the request, whatever its field name; HTTP errors say what to change."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise HTTPException(415, f"send images as multipart/form-data (e.g. curl -F files=@photo.jpg URL), "
                                 f"not Content-Type {content_type or 'none'!r}")
    declared = int(request.headers.get("content-length") or 0)  # the HTTP server has checked it is a number
    if declared > max_bytes:
        raise _too_large(declared, max_bytes)
    parser = MultiPartParser(request.headers, _limited(request.stream(), max_bytes),
                             max_files=max_files, max_fields=MAX_FORM_FIELDS)
    # Every upload stays in memory: nothing touches disk. Starlette 0.46 renamed the spool limit.
    setattr(parser, "spool_max_size" if hasattr(parser, "spool_max_size") else "max_file_size", max_bytes)
    try:
        form = await parser.parse()
    except MultiPartException as err:
        if err.message.startswith("Too many files"):  # Starlette's max_files, checked as the parts arrive
            raise HTTPException(413, f"too many files in one request: the limit is {max_files} "
                                     "(send several requests)") from None
        raise HTTPException(400, f"malformed multipart body: {err.message}") from None
    try:
        files = [value for _, value in form.multi_items() if isinstance(value, UploadFile)]
        _check_files(files)
        return [Upload(f.filename or f"upload-{i + 1}", await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()


def _check_files(files: list[UploadFile]) -> None:
    if not files:
        raise HTTPException(422, "no image in the request; attach one or more files (e.g. curl -F files=@photo.jpg URL)")
    for file in files:
        declared = (file.content_type or "").lower()
        if declared and not declared.startswith(ACCEPTED_TYPES):
            raise HTTPException(415, f"{file.filename!r} was sent as {declared}, not an image; "
                                     "send JPEG, PNG, WebP, GIF, BMP or TIFF files")


async def _limited(stream: AsyncIterator[bytes], max_bytes: int) -> AsyncIterator[bytes]:
    received = 0
    async for chunk in stream:
        received += len(chunk)
        if received > max_bytes:
            raise _too_large(received, max_bytes, at_least=True)
        yield chunk


def _too_large(size: int, max_bytes: int, at_least: bool = False) -> HTTPException:
    return HTTPException(413, f"upload of {'over ' if at_least else ''}{size / 2**20:.3g} MB is over the "
                              f"{max_bytes / 2**20:.3g} MB limit; "
                              "send a smaller image or start the server with a larger --max-upload-mb")
