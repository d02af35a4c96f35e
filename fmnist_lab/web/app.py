"""The prediction page and API: a FastAPI app over a loaded classifier, with every request's
work bounded (upload size, decoded pixels)."""

from __future__ import annotations

import base64
import binascii
import json
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import (
    http_exception_handler,
    request_validation_exception_handler,
)
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from fmnist_lab import preprocess
from fmnist_lab.predict import LoadedModel, summary
from fmnist_lab.preprocess import ImageError
from fmnist_lab.web import MAX_UPLOAD_BYTES

# A refused request's unread body is read and dropped up to this many bytes before the answer,
# so a client still sending gets the 4xx and not a reset connection; a larger body is cut off.
DRAIN_BYTES = 64 * 1024 * 1024

PREDICT_BODY = {  # the request body /predict reads itself (to enforce the size limit)
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "properties": {"file": {"type": "string", "format": "binary"}},
                "required": ["file"],
            }
        },
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "image": {"type": "string", "description": "base64 (or a data: URL)"}
                },
                "required": ["image"],
            }
        },
    },
}


def create_app(
    classifier: LoadedModel,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = preprocess.MAX_PIXELS,
) -> FastAPI:
    app = FastAPI(
        title="fmnist_lab",
        summary="Classify photos of clothes with a model trained by fmnist_lab.",
        version="1",
    )
    page = resources.files("fmnist_lab").joinpath("web/index.html").read_text()

    @app.exception_handler(ImageError)
    async def bad_image(request: Request, err: ImageError) -> JSONResponse:
        await drain(request)
        return JSONResponse({"detail": str(err)}, status_code=err.status)

    @app.exception_handler(RequestValidationError)
    async def bad_query(request: Request, err: RequestValidationError) -> JSONResponse:
        await drain(request)
        return await request_validation_exception_handler(request, err)

    @app.exception_handler(StarletteHTTPException)
    async def no_such_page(request: Request, err: StarletteHTTPException) -> Response:
        await drain(request)  # an upload to a wrong path or with a wrong method: 404, 405
        return await http_exception_handler(request, err)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> str:
        return page

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/model")
    def model() -> dict[str, Any]:
        """Which model answers: name, version, parameters, test accuracy, class names."""
        return {**classifier.info, "summary": summary(classifier.info),
                "classes": classifier.classes}  # fmt: skip

    @app.post("/predict", openapi_extra={"requestBody": PREDICT_BODY})
    async def predict(request: Request, top_k: int = 3) -> dict[str, Any]:
        """The top-k classes of one image, and the 28x28 image the model saw (PNG, base64)."""
        if not 1 <= top_k <= len(classifier.classes):
            raise ImageError(f"top_k must be between 1 and {len(classifier.classes)}", 422)
        data = await read_image(request, max_upload_bytes)
        prepared = await run_in_threadpool(prepare, data, max_pixels)
        probs = await run_in_threadpool(classifier.predict, [prepared])
        png = base64.b64encode(preprocess.to_png(prepared)).decode()
        return {
            "top": classifier.top(probs[0], top_k),
            "preprocessed": f"data:image/png;base64,{png}",
            "model": summary(classifier.info),
        }

    return app


def prepare(data: bytes, max_pixels: int):
    return preprocess.prepare(preprocess.open_image(data, max_pixels))


async def drain(request: Request) -> None:
    """Read and drop what is left of the request body, up to DRAIN_BYTES."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > DRAIN_BYTES:
        return
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > DRAIN_BYTES:
                return
    except (RuntimeError, ClientDisconnect):  # the body was read already, or the client left
        return


async def read_image(request: Request, limit: int) -> bytes:
    """The uploaded image's bytes: the body is read up to `limit` bytes and no further."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
        raise ImageError(f"the upload is over the limit of {limit:,} bytes", 413)
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit + 64 * 1024:  # room for the multipart envelope
            raise ImageError(f"the upload is over the limit of {limit:,} bytes", 413)
    kind = request.headers.get("content-type", "")
    if kind.startswith("application/json"):
        try:
            text = json.loads(body)["image"]
            if text.startswith("data:"):
                text = text.partition(",")[2]
            data = base64.b64decode(text, validate=True)
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError, binascii.Error):
            raise ImageError('send JSON {"image": "<base64 image>"}', 400) from None
    elif kind.startswith("multipart/form-data"):
        request._body = bytes(body)  # Starlette parses the form from the buffered body
        form = await request.form(max_files=1, max_fields=10)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise ImageError("send the image in the multipart field 'file'", 400)
        data = await upload.read()
    else:
        raise ImageError("send multipart/form-data (field 'file') or application/json", 415)
    if len(data) > limit:
        raise ImageError(f"the image is over the limit of {limit:,} bytes", 413)
    return data
