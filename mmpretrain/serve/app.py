"""The HTTP layer: FastAPI routes that parse a request, call :class:`~mmpretrain.serve.service.Service`, and answer
JSON; every refusal is one line ``{"error", "kind"}`` with a 4xx status."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from mmpretrain import __version__
from mmpretrain.serve.guard import Guard, error_body
from mmpretrain.serve.inputs import RequestError, from_base64
from mmpretrain.serve.service import Service

log = logging.getLogger(__name__)


def _body_doc(json_fields: dict[str, Any], form_fields: dict[str, Any]) -> dict[str, Any]:
    """An OpenAPI requestBody accepting JSON or multipart, since routes read the body themselves."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": {"type": "object", "properties": json_fields}},
        "multipart/form-data": {"schema": {"type": "object", "properties": form_fields}},
    }}}


_FILES = {"type": "array", "items": {"type": "string", "format": "binary"}}
_B64 = {"type": "array", "items": {"type": "string", "description": "base64 (data: URLs allowed)"}}
_TEXTS = {"type": "array", "items": {"type": "string"}}


class Payload:
    """A request's fields, from a JSON object or a multipart form alike."""

    def __init__(self, fields: dict[str, list[Any]], is_json: bool) -> None:
        self.fields, self.is_json = fields, is_json

    def get(self, name: str) -> Any:
        """A single field's value (the first, where a form repeats it); None when absent."""
        values = self.fields.get(name)
        return values[0] if values else None

    def files(self, name: str) -> list[bytes] | None:
        """Bytes of uploaded files (multipart) or base64 strings (JSON) under ``name``; None when absent."""
        if name not in self.fields:
            return None
        values = self.fields[name]
        if self.is_json:
            items = values[0] if isinstance(values[0], list) else [values[0]]
            return [from_base64(v, f"{name}[{i}]") for i, v in enumerate(items)]
        blobs = []
        for i, value in enumerate(values):
            if not isinstance(value, bytes):
                raise RequestError(400, "not_a_file", f"{name}[{i}]: expected an uploaded file, got a text field")
            blobs.append(value)
        return blobs

    def texts(self, name: str) -> Any:
        """A list field: the JSON value as sent (checked later), or every value of a repeated form field."""
        if name not in self.fields:
            return None
        return self.fields[name][0] if self.is_json else self.fields[name]


async def read_payload(request: Request, max_files: int) -> Payload:
    """Parse a JSON object or a multipart form (files read into bytes); other content types get 415."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind == "application/json":
        try:
            data = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RequestError(400, "bad_json", f"body is not valid JSON ({err})") from None
        if not isinstance(data, dict):
            raise RequestError(400, "bad_json", "body must be a JSON object")
        return Payload({key: [value] for key, value in data.items()}, is_json=True)
    if kind == "multipart/form-data":
        form = await request.form(max_files=max_files + 1, max_fields=max_files + 16)
        fields: dict[str, list[Any]] = {}
        for key, value in form.multi_items():
            fields.setdefault(key, []).append(await value.read() if isinstance(value, UploadFile) else value)
        await form.close()
        return Payload(fields, is_json=False)
    raise RequestError(415, "unsupported_media_type", f"Content-Type {kind or 'none'!r} is not accepted; send "
                                                      "application/json or multipart/form-data")


def _int(value: Any, name: str, default: int) -> Any:
    """A form field's integer (forms carry text); JSON numbers pass as they are and are checked by the service."""
    if value is None:
        return default
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            raise RequestError(400, f"bad_{name}", f"{name}={value!r} is not an integer") from None
    return value


def create_app(service: Service) -> Any:
    """The ASGI application of ``service``: FastAPI routes wrapped in the :class:`~mmpretrain.serve.guard.Guard`.

    Example:
        >>> import uvicorn  # doctest: +SKIP
        >>> uvicorn.run(create_app(Service.load(ServeConfig(encoder="model.ckpt"))), port=8000)  # doctest: +SKIP
    """
    config = service.config

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.start()
        yield
        service.stop()

    app = FastAPI(title="mmpretrain-serve", version=__version__, lifespan=lifespan,
                  description="Embeddings, search and few-shot classification with one encoder. Every refusal is "
                              "a 4xx with one line of JSON: {\"error\": message, \"kind\": short name}.")

    def refuse(request: Request, status: int, kind: str, message: str) -> Response:
        request.state.error_kind = kind
        return Response(error_body(kind, message), status, media_type="application/json")

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError) -> Response:
        return refuse(request, exc.status, exc.kind, exc.message)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code == 404:
            routes = sorted({getattr(r, "path", "") for r in app.routes} - {""})
            return refuse(request, 404, "unknown_route", f"no route {request.method} {request.url.path}; routes: "
                                                         f"{', '.join(routes)}")
        if exc.status_code == 405:
            return refuse(request, 405, "method_not_allowed", f"{request.method} is not allowed on {request.url.path}")
        return refuse(request, exc.status_code, f"http_{exc.status_code}", str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", []))
        return refuse(request, 400, "invalid_request", f"{where}: {first.get('msg')}")

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.exception("%s %s failed", request.method, request.url.path)
        return refuse(request, 500, "internal_error", f"internal error ({type(exc).__name__}); see the server log")

    @app.get("/health", summary="Liveness and what is loaded")
    async def health() -> JSONResponse:
        info = service.describe()
        return JSONResponse(info, status_code=200 if info["status"] == "ok" else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def metrics() -> Response:
        body, content_type = service.metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/v1/embed", summary="Embed images, texts or a video", openapi_extra=_body_doc(
        {"images": _B64, "texts": _TEXTS, "video": {"type": "string", "description": "base64"},
         "title": {"type": "string"}},
        {"images": _FILES, "texts": _TEXTS, "video": {"type": "string", "format": "binary"},
         "title": {"type": "string"}}))
    async def embed(request: Request) -> JSONResponse:
        """One row per input, equal to ``encode_images`` / ``encode_texts`` / ``encode_videos`` (L2-normalised)."""
        payload = await read_payload(request, config.max_items)
        images, texts, video = payload.files("images"), payload.texts("texts"), payload.files("video")
        given = [n for n, v in (("images", images), ("texts", texts), ("video", video)) if v is not None]
        if len(given) != 1:
            raise RequestError(400, "bad_query", f"give exactly one of images, texts or video, got {given or 'none'}")
        if images is not None:
            rows, kind = await service.embed_images(images), "image"
        elif texts is not None:
            rows, kind = await service.embed_texts(texts), "text"
        else:
            if len(video) != 1:
                raise RequestError(400, "bad_query", f"video: send one video per request, got {len(video)}")
            title = payload.get("title")
            rows, kind = await service.embed_video(video[0], title if isinstance(title, str) else None), "video"
        return JSONResponse({"kind": kind, "encoder": service.encoder.name, "dim": int(rows.shape[1]),
                             "embeddings": rows.tolist()})

    @app.post("/v1/search", summary="Top-k store items for an image, a text or a vector", openapi_extra=_body_doc(
        {"image": {"type": "string", "description": "base64"}, "text": {"type": "string"},
         "vector": {"type": "array", "items": {"type": "number"}}, "k": {"type": "integer", "default": 10}},
        {"image": {"type": "string", "format": "binary"}, "text": {"type": "string"},
         "k": {"type": "integer", "default": 10}}))
    async def search(request: Request) -> JSONResponse:
        """Hits best first: ``{"id", "score", "path", "label", "tags"}`` (metadata where the store has it)."""
        payload = await read_payload(request, 1)
        image = payload.files("image")
        if image is not None and len(image) != 1:
            raise RequestError(400, "bad_query", f"image: send one image per search, got {len(image)}")
        text = payload.get("text")
        if text is not None and not isinstance(text, str):
            raise RequestError(400, "bad_query", "text: expected a string")
        hits = await service.search(_int(payload.get("k"), "k", 10), image=image[0] if image else None, text=text,
                                    vector=payload.get("vector") if payload.is_json else None)
        return JSONResponse({"hits": hits})

    @app.post("/v1/classify", summary="Labels with probabilities, or unknown", openapi_extra=_body_doc(
        {"images": _B64, "top_k": {"type": "integer", "default": 5}},
        {"images": _FILES, "top_k": {"type": "integer", "default": 5}}))
    async def classify(request: Request) -> JSONResponse:
        """For each image: ``{"predicted": label or "unknown", "labels": [{"label", "p"}, ...]}``."""
        payload = await read_payload(request, config.max_items)
        images = payload.files("images")
        if images is None:
            raise RequestError(400, "bad_query", "images: required")
        top_k = _int(payload.get("top_k"), "top_k", 5)
        if not isinstance(top_k, int) or top_k < 1:
            raise RequestError(400, "bad_top_k", f"top_k={top_k!r} must be a positive integer")
        return JSONResponse({"predictions": await service.classify(images, top_k)})

    @app.get("/v1/thumbnail", summary="A thumbnail of a store item, by id", response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    async def thumbnail(id: str) -> Response:
        """JPEG of the loaded store's item ``id``, read from the path the store recorded (ids only, never paths)."""
        return Response(await service.thumbnail(id), media_type="image/jpeg",
                        headers={"Cache-Control": "private, max-age=3600"})

    @app.get("/", response_class=HTMLResponse, summary="The search page")
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("mmpretrain.serve").joinpath("page.html").read_text(encoding="utf-8"))

    guarded: Any = Guard(app, service.metrics, config.max_body_bytes, config.read_timeout_s, config.token)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        guarded = CORSMiddleware(guarded, allow_origins=config.cors_origins, allow_methods=["GET", "POST"],
                                 allow_headers=["Authorization", "Content-Type"])
    guarded.fastapi = app
    return guarded
