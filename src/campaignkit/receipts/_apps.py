"""The receiver as a WSGI app and as an ASGI app, to mount in any web framework.

Both read at most ``max_body_bytes`` (+1, to tell a body over the limit) of a
request, whatever its ``Content-Length`` claims, and hand the rest to
:meth:`ReceiptReceiver.handle`. The ASGI app runs the handler (which writes to the
ledger) in a worker thread, so that the event loop never waits for the database.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ._receiver import ReceiptReceiver, ReceiptRequest, ReceiptResponse

__all__ = ["asgi_app", "wsgi_app"]

_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    411: "Length Required",
    413: "Content Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_TOO_LARGE = ReceiptResponse(413, b"body too large\n")
_READ_CHUNK = 65_536

StartResponse = Callable[..., Any]
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _headers(response: ReceiptResponse, *, lower: bool = False) -> list[tuple[str, str]]:
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers,
    ]
    return [(k.lower(), v) for k, v in headers] if lower else headers


def _wsgi_body(environ: MutableMapping[str, Any], limit: int) -> bytes | None:
    """The body, or ``None`` when it is over ``limit`` bytes."""
    length_text = environ.get("CONTENT_LENGTH") or ""
    stream = environ.get("wsgi.input")
    if stream is None:
        return b""
    if not length_text.strip() and not environ.get("wsgi.input_terminated"):
        return b""  # no length, and a stream that may never end: no body (PEP 3333)
    if length_text.strip():
        try:
            length = int(length_text)
        except ValueError:
            return None
        if length > limit or length < 0:
            return None
        return stream.read(length) if length else b""
    chunks, size = [], 0  # no length (chunked): read until the end, or past the limit
    while size <= limit:
        chunk = stream.read(min(_READ_CHUNK, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return None if size > limit else b"".join(chunks)


def wsgi_app(receiver: ReceiptReceiver) -> Callable[..., Iterable[bytes]]:
    """A WSGI application answering ``POST /receipts/<channel>`` below its mount point.

    Mount it where the ``[receipts] public_url`` points (Flask/Django: a dispatcher
    middleware; ``campaignkit receipts serve`` serves it with waitress).
    """
    limit = receiver.config.max_body_bytes

    def app(environ: MutableMapping[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        body = _wsgi_body(environ, limit)
        if body is None:
            response = _TOO_LARGE
        else:
            request = ReceiptRequest(
                method=str(environ.get("REQUEST_METHOD", "GET")),
                path=str(environ.get("PATH_INFO", "")),
                headers={
                    key[5:].replace("_", "-"): value
                    for key, value in environ.items()
                    if key.startswith("HTTP_")
                },
                body=body,
                query=str(environ.get("QUERY_STRING", "")),
            )
            response = receiver.handle(request)
        status = f"{response.status} {_REASONS.get(response.status, 'Error')}"
        start_response(status, _headers(response))
        return [response.body]

    return app


async def _asgi_body(receive: Receive, limit: int) -> bytes | None:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return b""
        chunk = message.get("body", b"") or b""
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def asgi_app(receiver: ReceiptReceiver) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    """An ASGI application answering ``POST /receipts/<channel>`` below its mount point
    (FastAPI/Starlette: ``app.mount("/hooks", asgi_app(receiver))``)."""
    limit = receiver.config.max_body_bytes

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "lifespan":
            while True:
                message = await receive()
                kind = message.get("type")
                if kind == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif kind == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope.get("type") != "http":
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"")
        if declared.strip().isdigit() and int(declared) > limit:
            response = _TOO_LARGE
        else:
            body = await _asgi_body(receive, limit)
            if body is None:
                response = _TOO_LARGE
            else:
                headers = [
                    (k.decode("latin-1"), v.decode("latin-1"))
                    for k, v in scope.get("headers") or ()
                ]
                path = scope.get("path", "")
                root = scope.get("root_path", "")
                if root and path.startswith(root):  # mounted: the path below the mount
                    path = path[len(root) :]
                request = ReceiptRequest(
                    method=str(scope.get("method", "GET")),
                    path=str(path),
                    headers=headers,
                    body=body,
                    query=(scope.get("query_string") or b"").decode("latin-1"),
                )
                loop = asyncio.get_running_loop()
                response = await loop.run_in_executor(None, receiver.handle, request)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": [
                    (k.encode("latin-1"), v.encode("latin-1"))
                    for k, v in _headers(response, lower=True)
                ],
            }
        )
        await send({"type": "http.response.body", "body": response.body})

    return app
