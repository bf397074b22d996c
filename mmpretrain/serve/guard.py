"""The ASGI layer in front of every route: body size cap, slow-body timeout, bearer token, and request metrics.

It sits outside routing, so unknown routes, refused bodies and failed tokens are counted like everything else.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mmpretrain.serve.inputs import RequestError
from mmpretrain.serve.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Paths anyone may read without the token: liveness, the page's HTML and the API documentation (no data).
OPEN_PATHS = frozenset({"/health", "/", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"})


def error_body(kind: str, message: str) -> bytes:
    """The one-line JSON of every refusal: ``{"error": "...", "kind": "..."}``."""
    return (json.dumps({"error": message, "kind": kind}) + "\n").encode()


class Guard:
    """ASGI middleware: refuse a body over ``max_body_bytes`` (413), a body part slower than ``read_timeout`` (408)
    and a missing or wrong bearer token (401); count every request in ``metrics``.

    Handlers report the kind of a refusal they answered in ``scope["state"]["error_kind"]``.
    """

    def __init__(self, app: Any, metrics: Metrics, max_body_bytes: int, read_timeout: float,
                 token: str | None) -> None:
        self.app, self.metrics = app, metrics
        self.max_body_bytes, self.read_timeout = max_body_bytes, read_timeout
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}
        state = scope.setdefault("state", {})

        async def send_counted(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        self.metrics.in_flight.inc()
        try:
            refusal = self._refusal(scope)
            if refusal is not None:
                state["error_kind"] = refusal.kind
                await _respond(send_counted, refusal)
            else:
                await self.app(scope, self._limited(receive), send_counted)
        finally:
            self.metrics.in_flight.dec()
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            code = status["code"]
            self.metrics.requests.labels(route, scope["method"], str(code)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            if code >= 400:
                self.metrics.errors.labels(route, state.get("error_kind", f"http_{code}")).inc()

    def _refusal(self, scope: Scope) -> RequestError | None:
        """What to answer without calling the app: a wrong token, or a declared body over the cap."""
        headers = dict(scope["headers"])
        if self.token is not None and scope["path"] not in OPEN_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not hmac.compare_digest(given.encode(), f"Bearer {self.token}".encode()):
                what = "missing" if not given else "wrong"
                return RequestError(401, "unauthorized", f"{what} bearer token: send 'Authorization: Bearer <token>'")
        length = headers.get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return RequestError(400, "bad_content_length", f"Content-Length {length!r} is not a number")
            if declared > self.max_body_bytes:
                return RequestError(413, "body_too_large", f"request body of {declared} bytes is over the limit of "
                                                           f"{self.max_body_bytes} bytes (max_body_mb)")
        return None

    def _limited(self, receive: Receive) -> Receive:
        """``receive`` that raises :class:`RequestError` past the size cap or when a body part is slower than the
        timeout (only while the body is arriving: waiting for a disconnect afterwards is not timed)."""
        seen = {"bytes": 0, "done": False}

        async def wrapped() -> Message:
            if seen["done"]:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), self.read_timeout)
            except asyncio.TimeoutError:
                raise RequestError(408, "read_timeout", f"the request body did not arrive within "
                                                        f"{self.read_timeout:g} s (read_timeout_s)") from None
            if message["type"] == "http.request":
                seen["bytes"] += len(message.get("body", b""))
                seen["done"] = not message.get("more_body", False)
                if seen["bytes"] > self.max_body_bytes:
                    raise RequestError(413, "body_too_large", f"request body is over the limit of "
                                                              f"{self.max_body_bytes} bytes (max_body_mb)")
            else:
                seen["done"] = True
            return message

        return wrapped


async def _respond(send: Send, error: RequestError) -> None:
    body = error_body(error.kind, error.message)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
