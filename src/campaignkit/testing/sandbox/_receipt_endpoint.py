"""A receipts receiver on 127.0.0.1 for rehearsals: what the fakes' callbacks reach.

The endpoint listens before the rehearsal's campaign exists (the campaign's
``[receipts] public_url`` is the endpoint's address) and serves the campaign's
receiver, with the production server (waitress) and the production WSGI app, once it
is attached. Until then it answers 503, which the fakes retry like providers do.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

from ...receipts import ReceiptReceiver, wsgi_app

__all__ = ["ReceiptEndpoint"]


class ReceiptEndpoint:
    """Waitress on 127.0.0.1 (a free port) serving the receiver attached to it."""

    def __init__(self) -> None:
        self._app: Callable[..., Iterable[bytes]] | None = None
        self._receiver: ReceiptReceiver | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: where the routes ``/receipts/<channel>`` are."""
        if self._server is None:
            raise RuntimeError("the receipts endpoint is not started")
        return f"http://127.0.0.1:{self._server.effective_port}"

    @property
    def receiver(self) -> ReceiptReceiver | None:
        """The receiver attached, if any."""
        return self._receiver

    def start(self) -> str:
        """Listen (once); returns :attr:`url`."""
        if self._server is None:
            try:
                from waitress import create_server
            except ImportError as error:
                from ...receipts import ReceiptsDependencyError

                raise ReceiptsDependencyError(
                    "receiving sandbox receipts needs waitress: pip install 'campaignkit[sandbox]'"
                ) from error
            self._server = create_server(self._dispatch, host="127.0.0.1", port=0, threads=4)
            self._thread = threading.Thread(
                target=self._server.run, name="ck-sandbox-receipts", daemon=True
            )
            self._thread.start()
        return self.url

    def attach(self, receiver: ReceiptReceiver) -> None:
        """Serve ``receiver`` from now on (replacing an earlier one; the caller closes
        what it replaced)."""
        self._receiver = receiver
        self._app = wsgi_app(receiver)

    def _dispatch(
        self, environ: MutableMapping[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        app = self._app
        if app is None:
            start_response("503 Service Unavailable", [("Retry-After", "1")])
            return [b"no receiver yet\n"]
        return app(environ, start_response)

    def stop(self) -> None:
        """Stop listening and close the receiver's ledger connection."""
        if self._server is not None:
            self._server.close()
            if self._thread is not None:
                self._thread.join(timeout=5)
            self._server = self._thread = None
        if self._receiver is not None:
            self._receiver.book.close()
            self._receiver = None
            self._app = None
