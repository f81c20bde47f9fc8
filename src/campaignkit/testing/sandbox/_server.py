"""The loopback HTTP server every sandbox provider is built on, with fault injection.

The pieces live in their own modules, re-exported here: the request and reply
(:mod:`._wire`), the fault settings (:mod:`._faults`) and the message journal
(:mod:`._journal`).
"""

from __future__ import annotations

import abc
import collections
import contextlib
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

import attrs

from ..._rehearsal import sandbox_started, sandbox_stopped
from ._faults import Faults
from ._journal import JournalError, MessageJournal, RecordedMessages, attach_journal
from ._wire import Reply, Request

__all__ = [
    "Faults",
    "JournalError",
    "MessageJournal",
    "ProviderServer",
    "RecordedMessages",
    "Reply",
    "Request",
    "attach_journal",
]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
    # client's delayed ACK costs ~40 ms per request on a kept-alive connection.
    disable_nagle_algorithm = True
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr
        return

    def _handle(self) -> None:
        body = self._read_body()
        if body is None:
            self.close_connection = True
            self._send(Reply(400, {"errors": [{"message": "invalid Content-Length or chunk"}]}))
            return
        parts = urlsplit(self.path)
        request = Request(
            method=self.command,
            path=parts.path,
            query=parse_qs(parts.query),
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        reply = self.server.provider._dispatch(request)
        if reply is None:  # drop the connection without answering
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(reply)

    def _read_body(self) -> bytes | None:
        """The request body: ``Content-Length`` bytes, or the chunks of a
        ``Transfer-Encoding: chunked`` body; ``None`` when the framing is invalid."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks: list[bytes] = []
            while True:
                size_line = self.rfile.readline(1024).split(b";")[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    return None
                if size < 0:
                    return None
                if size == 0:
                    while self.rfile.readline(1024).strip():  # trailers
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(1024)  # the CRLF after the chunk
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit():
            return None
        length = int(text)
        return self.rfile.read(length) if length else b""

    def _send(self, reply: Reply) -> None:
        payload, content_type = reply.encode()
        self.send_response(reply.status)
        headers = {"Content-Type": content_type, **reply.headers}
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or hang up are part of the fault injection, not errors.
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)

    def __init__(self, provider: ProviderServer, port: int) -> None:
        self.provider = provider
        super().__init__(("127.0.0.1", port), _Handler)

    def server_activate(self) -> None:
        super().server_activate()
        # A client that connects and resets before the accept (a timed-out SDK, a
        # dropped fault) leaves the selector "readable" with nothing to accept: on a
        # blocking socket accept() would then wait for the next client, and shutdown()
        # with it, forever. Non-blocking, socketserver just returns to its loop.
        self.socket.setblocking(False)

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, address = self.socket.accept()
        conn.setblocking(True)  # the handler reads with ordinary blocking I/O
        return conn, address


class ProviderServer(abc.ABC):
    """Base of the sandbox servers: a threaded HTTP/1.1 server on 127.0.0.1.

    Subclasses implement :meth:`handle` with the provider's contract. The base
    applies :attr:`faults`, counts requests (timestamps in :attr:`request_times`)
    and offers :attr:`lock` for the subclass's recording.

    Every message a subclass adds to :attr:`messages` is also written to
    :attr:`journal` (``<provider>.jsonl``) when that has a path:
    ``server.journal.open("recorded/twilio.jsonl")`` records as messages arrive.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    #: the token the sandbox accepts unless another is given
    DEFAULT_TOKEN = "sandbox-token"  # noqa: S105 - a fake provider's fake token

    def __init__(
        self, *, token: str = DEFAULT_TOKEN, port: int = 0, faults: Faults | None = None
    ) -> None:
        #: where accepted messages are written as they arrive (no path: nowhere)
        self.journal = MessageJournal()
        self.token = token
        self.faults = faults if faults is not None else Faults()
        self.lock = threading.Lock()
        self.messages: list[Any] = []
        self.request_times: list[float] = []
        self._window: collections.deque[float] = collections.deque()
        self._port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __setattr__(self, name: str, value: Any) -> None:
        # Whatever list a subclass records into is journaled: ``self.messages = []``.
        if name == "messages" and not isinstance(value, RecordedMessages):
            journal = self.__dict__.get("journal")
            value = RecordedMessages(value, journal if journal is not None else MessageJournal())
        super().__setattr__(name, value)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Self:
        self._server = _Server(self, self._port)
        sandbox_started(self.port)  # pipelines sending here are rehearsals
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"sandbox-{type(self).__name__}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close :attr:`journal` (the recorded messages are kept)."""
        if self._server is not None:
            port = self.port
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            sandbox_stopped(port)
        self.journal.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "server not started"
        return int(self._server.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (the provider's path prefix is added by subclasses)."""
        return f"http://127.0.0.1:{self.port}"

    # -- request path -----------------------------------------------------------------
    def _dispatch(self, request: Request) -> Reply | None:
        try:
            reply = self._answer(request)
        except JournalError as exc:
            # Not recorded, so not accepted: the provider's 5xx (safe to retry).
            name = getattr(self, "provider", type(self).__name__)
            print(f"sandbox {name}: {exc.strerror}; answered 500", file=sys.stderr)
            return self.server_error_reply(500)
        if reply is not None and reply.status >= 400 and self.faults.echo_credentials:
            value = request.headers.get("authorization", "")
            credential = value.partition(" ")[2] or value
            echo = f"credentials {credential} rejected (Authorization: {value})"
            reply = attrs.evolve(reply, body=_with_echo(reply.body, echo))
        return reply

    def _answer(self, request: Request) -> Reply | None:
        faults = self.faults
        now = time.monotonic()
        if request.method == "GET" and not faults.lookups:
            with self.lock:
                self.request_times.append(now)
            return self.handle(request)
        with self.lock:
            self.request_times.append(now)
            scripted = faults.script.popleft() if faults.script else None
            limited = False
            if faults.rate_limit is not None:
                while self._window and now - self._window[0] >= 1.0:
                    self._window.popleft()
                if len(self._window) >= faults.rate_limit:
                    limited = True
                else:
                    self._window.append(now)
            roll_drop, roll_stall, roll_error = faults.draw(), faults.draw(), faults.draw()
            roll_late = faults.draw() if faults.late_rate or faults.lost_rate else 1.0
        if faults.latency:
            time.sleep(faults.latency)
        if scripted == "drop" or roll_drop < faults.drop_rate:
            return None
        if scripted == "stall" or roll_stall < faults.stall_rate:
            time.sleep(faults.stall_seconds)
        if limited or scripted == 429:
            return self.rate_limited_reply(faults.retry_after)
        if isinstance(scripted, int):
            return self.server_error_reply(scripted)
        if roll_error < faults.error_rate:
            return self.server_error_reply(faults.error_status)
        lost = scripted == "lost" or roll_late < faults.lost_rate
        late = scripted == "late" or faults.lost_rate <= roll_late < faults.lost_rate + (
            faults.late_rate
        )
        reply = self.handle(request)
        if lost:
            return None  # accepted, then the connection is closed without an answer
        if late:
            time.sleep(faults.stall_seconds)  # accepted, answered after the client gave up
        return reply

    @abc.abstractmethod
    def handle(self, request: Request) -> Reply:
        """Answer one request as the provider would."""

    def rate_limited_reply(self, retry_after: float) -> Reply:
        """The provider's 429; subclasses override to use the provider's body."""
        return Reply(
            429, {"errors": [{"message": "too many requests"}]}, {"Retry-After": f"{retry_after:g}"}
        )

    def server_error_reply(self, status: int) -> Reply:
        """The provider's 5xx (or other scripted status); subclasses may override."""
        return Reply(status, {"errors": [{"message": "internal error"}]})

    def requests_per_second(self) -> float:
        """Highest number of requests seen in any one-second window so far."""
        with self.lock:
            times = sorted(self.request_times)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= 1.0:
                start += 1
            best = max(best, end - start + 1)
        return float(best)


def _with_echo(body: Any, echo: str) -> Any:
    """An error body whose human-readable texts end with ``echo``."""
    if isinstance(body, bytes):
        return body + b" " + echo.encode("latin-1", "replace")
    if isinstance(body, str):
        return f"{body} {echo}"
    if isinstance(body, list):
        return [_with_echo(item, echo) for item in body]
    if isinstance(body, dict):
        out = {k: _with_echo(v, echo) if k == "errors" else v for k, v in body.items()}
        for key in ("message", "detail", "title"):
            if isinstance(out.get(key), str):
                out[key] = f"{out[key]} {echo}"
        if "errors" not in out and "message" not in out and "detail" not in out:
            out["message"] = echo
        return out
    return {"message": echo}
