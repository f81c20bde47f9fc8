"""The framework examples of examples/receipts import (when their framework is
installed), and the receiver serves as a plain WSGI app (``wsgiref``) and as a plain
ASGI app (a hand-written ASGI call): a signed Twilio callback answered 200 and in the
ledger."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import importlib.util
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlencode
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import requests

from campaignkit import Channel, Pipeline, PipelineConfig, SourceConfig, Template
from campaignkit._config import ReceiptsConfig
from campaignkit.receipts import asgi_app, receiver, wsgi_app
from campaignkit.testing.sandbox import Sandbox

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "receipts"
PUBLIC_URL = "https://hooks.example.com/hooks"
NUMBERS = ("+14155550101", "+14155550102")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"receipts_example_{name}", EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- the examples ---------------------------------------------------------------------
def test_flask_example_imports() -> None:
    pytest.importorskip("flask")
    assert callable(load("flask_app.py").create_app)


def test_fastapi_example_imports() -> None:
    pytest.importorskip("fastapi")
    assert callable(load("fastapi_app.py").create_app)


def test_django_example_imports() -> None:
    pytest.importorskip("django")
    assert callable(load("django_view.py").receipts)


def test_every_example_is_in_the_readme() -> None:
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for example in sorted(EXAMPLES.glob("*.py")):
        assert f"`{example.name}`" in readme, example.name


# -- a campaign sent through the sandbox ----------------------------------------------
def campaign(tmp_path: Path) -> PipelineConfig:
    seg = tmp_path / "seg.csv"
    rows = [f"c{i},{number},N{i}" for i, number in enumerate(NUMBERS)]
    seg.write_text("\n".join(["id,phone,first_name", *rows]) + "\n", encoding="utf-8")
    sms = Channel(
        name="sms",
        provider="twilio",
        template=Template(body="Hi {{ first_name }}"),
        require_consent=False,
    )
    return PipelineConfig(
        name="receipted",
        source=SourceConfig("csv", {"path": str(seg)}),
        channels=(sms,),
        receipts=ReceiptsConfig(public_url=PUBLIC_URL),
        base_dir=tmp_path,
    )


@pytest.fixture
def sent(tmp_path: Path) -> Iterator[tuple[Pipeline, dict[str, tuple[str, str]]]]:
    """The campaign, run once: number -> (Twilio message sid, the StatusCallback's
    query: the delivery's reference, which Twilio calls back with)."""
    with Sandbox(lazy=True) as box:
        pipeline = box.pipeline(campaign(tmp_path))
        pipeline.run()
        sids = {
            m["to"]: (m["sid"], m["status_callback"].split("?", 1)[1])
            for m in box.servers["twilio"].messages
        }
        assert set(sids) == set(NUMBERS)
        yield pipeline, sids


def receipts_of(pipeline: Pipeline) -> dict[str, int]:
    ledger = pipeline.ledger()
    try:
        run = ledger.list_runs(pipeline.name, limit=1)[0]
        return dict(ledger.counts(run.run_id, "sms").receipts)
    finally:
        ledger.close()


def twilio_callback(
    pipeline: Pipeline, params: dict[str, str], query: str
) -> tuple[dict[str, str], bytes]:
    """Headers and body of a status callback, signed as Twilio signs it (the URL it
    calls, query included)."""
    url = f"{PUBLIC_URL}/receipts/sms?{query}"
    signed = url + "".join(key + params[key] for key in sorted(params))
    token = pipeline.environ["SMS_API_TOKEN"].encode()
    digest = hmac.new(token, signed.encode(), hashlib.sha1).digest()
    headers = {
        "X-Twilio-Signature": base64.b64encode(digest).decode(),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return headers, urlencode(params).encode()


def status(sid: str, to: str, state: str, code: str = "") -> dict[str, str]:
    params = {"MessageSid": sid, "MessageStatus": state, "To": to, "AccountSid": "AC" + "0" * 32}
    if code:
        params["ErrorCode"] = code
    return params


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


# -- WSGI, served by the standard library ---------------------------------------------
def test_wsgi_app_served_by_wsgiref_records_a_signed_twilio_callback(
    sent: tuple[Pipeline, dict[str, str]],
) -> None:
    pipeline, sids = sent
    rx = receiver(pipeline)
    server: WSGIServer = make_server("127.0.0.1", 0, wsgi_app(rx), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        number = NUMBERS[0]
        sid, query = sids[number]
        headers, body = twilio_callback(pipeline, status(sid, number, "delivered"), query)
        route = f"{base}/receipts/sms?{query}"
        answer = requests.post(route, data=body, headers=headers, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"].startswith("text/xml")
        # The same callback again (a provider's retry): 200, applied once.
        again = requests.post(route, data=body, headers=headers, timeout=10)
        assert again.status_code == 200
        # Forged: refused, nothing recorded.
        forged = dict(headers, **{"X-Twilio-Signature": "AAAA"})
        refused = requests.post(route, data=body, headers=forged, timeout=10)
        assert refused.status_code == 401
        no_body = {"Content-Length": "0"}
        assert requests.get(f"{base}/receipts/sms", headers=no_body, timeout=10).status_code == 405
        assert requests.post(f"{base}/receipts/nope", data=b"", timeout=10).status_code == 404
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        rx.book.close()
    assert receipts_of(pipeline) == {"delivered": 1}
    stats = rx.stats()
    assert (stats.recorded, stats.duplicates, stats.refused) == (1, 1, 1)


def test_wsgi_request_without_content_length_is_answered(
    sent: tuple[Pipeline, dict[str, str]],
) -> None:
    pipeline, _ = sent
    rx = receiver(pipeline)
    server: WSGIServer = make_server("127.0.0.1", 0, wsgi_app(rx), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/receipts/sms"
        assert requests.get(url, timeout=3).status_code == 405
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        rx.book.close()


# -- ASGI, driven by hand -------------------------------------------------------------
async def asgi_post(
    app: Any,
    path: str,
    headers: dict[str, str],
    body: bytes,
    *,
    root_path: str = "",
    query: str = "",
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One ASGI HTTP request, the body in two chunks, as a server sends it."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "https",
        "path": root_path + path,
        "raw_path": (root_path + path).encode(),
        "root_path": root_path,
        "query_string": query.encode(),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 443),
    }
    half = len(body) // 2
    incoming = [
        {"type": "http.request", "body": body[:half], "more_body": True},
        {"type": "http.request", "body": body[half:], "more_body": False},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(dict(message))

    await app(scope, receive, send)
    start, content = sent[0], sent[1]
    assert start["type"] == "http.response.start" and content["type"] == "http.response.body"
    return start["status"], {k.lower(): v for k, v in start["headers"]}, content["body"]


def test_asgi_app_driven_by_hand_records_a_signed_twilio_callback(
    sent: tuple[Pipeline, dict[str, str]],
) -> None:
    pipeline, sids = sent
    rx = receiver(pipeline)
    app = asgi_app(rx)
    try:
        number = NUMBERS[1]
        sid, query = sids[number]
        headers, body = twilio_callback(
            pipeline, status(sid, number, "undelivered", "30005"), query
        )
        # Mounted below /hooks (what Starlette's Mount passes): the path below it counts.
        code, answer_headers, answer = asyncio.run(
            asgi_post(app, "/receipts/sms", headers, body, root_path="/hooks", query=query)
        )
        assert code == 200, answer
        assert answer_headers[b"content-type"].startswith(b"text/xml")
        code, _, _ = asyncio.run(asgi_post(app, "/receipts/sms", {}, body))
        assert code == 401  # unsigned
    finally:
        rx.book.close()
    assert receipts_of(pipeline) == {"bounced": 1}
    ledger = pipeline.ledger()
    try:
        suppressed = {(kind, address): reason for kind, address, reason, _ in ledger.suppressions()}
    finally:
        ledger.close()
    assert suppressed[("phone", number)] == "bounced"


def test_asgi_app_answers_lifespan() -> None:
    """Servers (uvicorn) send lifespan events to the app they serve."""
    pytest.importorskip("cryptography")

    class _NoBook:
        location = "memory"

    from campaignkit.receipts import ReceiptReceiver

    app = asgi_app(ReceiptReceiver([], _NoBook()))  # type: ignore[arg-type]
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
