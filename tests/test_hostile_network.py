"""A hostile network and hostile providers, on the real path: ``Pipeline`` against the
loopback sandbox (real HTTP on 127.0.0.1), counting what the fake providers accepted.

* A request the client gave up on may still be acted on by the provider afterwards
  (a stall before processing): a lookup right after the timeout says "no such
  message", and a re-send then delivers a second copy. The lookup waits until the
  request had time to settle, whatever the retry delay (``--retry-delay 0``,
  ``retries = 0``).
* A token of 1-3 characters echoed in a provider's error body was stored and printed
  as is (short secrets were not searched for at all).
"""

from __future__ import annotations

import base64
import collections
import logging
from pathlib import Path
from typing import Any

import pytest

from campaignkit import Channel, Pipeline, RetryPolicy, Template, get_plugin_manager, hookimpl
from campaignkit._redact import forget, redact, remember
from campaignkit.testing import StaticSource
from campaignkit.testing.sandbox import Sandbox


def _phones(n: int) -> list[dict[str, Any]]:
    return [
        {"id": f"C{i}", "phone": f"+1415555{i:04d}", "email": f"u{i}@example.com"} for i in range(n)
    ]


def _sms_pipeline(
    sandbox: Sandbox, tmp_path: Path, *, retries: int, timeout: float, n: int = 4, **kw: Any
) -> Pipeline:
    channel = Channel(
        name="sms",
        provider="twilio",
        template=Template(body="Hello there"),
        options=sandbox.channel_options("twilio"),
        require_consent=False,
        timeout_seconds=timeout,
        concurrency=1,
        retry=RetryPolicy(retries=retries, delay_minutes=0),
    )
    return Pipeline(
        "hostile",
        StaticSource.from_dicts(_phones(n)),
        [channel],
        base_dir=tmp_path,
        env=sandbox.env(),
        **kw,
    )


@pytest.mark.parametrize("retries", [0, 1])
def test_twilio_stalled_request_is_not_looked_up_too_early(tmp_path: Path, retries: int) -> None:
    """The first request stalls before Twilio processes it (past the client timeout);
    with no retry delay the lookup used to run at once, find nothing, and the re-send
    (or, with ``retries = 0``, ``retry-failed``) delivered a second SMS while the
    ledger recorded one. The real ``time.sleep`` is used: no injected clock."""
    with Sandbox(["twilio"]) as sandbox:
        twilio = sandbox.servers["twilio"]
        twilio.faults.stall_seconds = 0.8
        twilio.faults.fail_next("stall")
        pipeline = _sms_pipeline(sandbox, tmp_path, retries=retries, timeout=0.3)
        report = pipeline.run()
        results = pipeline.results(report.run_id)
        per = collections.Counter(m["to"] for m in twilio.messages)
    assert set(per.values()) == {1}, per
    assert len(per) == 4
    states = collections.Counter(r.status.value for r in results)
    # The stalled one was found by the lookup once it had settled: sent, not failed
    # (a failed transient message is re-sent by retry-failed: a second copy).
    assert states == {"sent": 4}, [(r.recipient_id, r.status, r.error_code) for r in results]


class _Hooks:
    def __init__(self) -> None:
        self.payloads: list[str] = []

    @hookimpl
    def campaignkit_channel_finished(self, **kwargs: Any) -> None:
        self.payloads.append(repr(kwargs))

    @hookimpl
    def campaignkit_run_finished(self, **kwargs: Any) -> None:
        self.payloads.append(repr(kwargs))


@pytest.mark.parametrize("token", ["Zq", "Q.z", "x7", "Z*q"])
def test_a_short_token_echoed_by_the_provider_is_never_stored_or_logged(
    tmp_path: Path, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    """SendGrid's error body echoes ``credentials <token> rejected``: a token of 1-3
    characters (regex metacharacters included) is redacted as a whole word."""
    hooks = _Hooks()
    plugins = get_plugin_manager(plugins=[hooks])
    with Sandbox(["sendgrid"]) as sandbox:
        server = sandbox.servers["sendgrid"]
        server.token = token
        server.faults.echo_credentials = True
        server.faults.fail_next(400)
        channel = Channel(
            name="email",
            provider="sendgrid",
            template=Template(subject="Hi", body="Hello"),
            options=sandbox.channel_options("sendgrid"),
            require_consent=False,
            retry=RetryPolicy(retries=0),
        )
        pipeline = Pipeline(
            "short",
            StaticSource.from_dicts(_phones(2)),
            [channel],
            base_dir=tmp_path,
            env={"EMAIL_API_TOKEN": token},
            plugins=plugins,
            sleep=lambda s: None,
        )
        with caplog.at_level(logging.DEBUG):
            report = pipeline.run(output_dir=tmp_path / "out")
        results = pipeline.results(report.run_id)
    errors = [r.error for r in results if r.error]
    assert errors and all("credentials *** rejected" in e for e in errors), errors
    texts = {"log": caplog.text, "hooks": "\n".join(hooks.payloads), "errors": "\n".join(errors)}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    needle = f" {token} "  # as the echo spells it: a whole word
    for name, text in texts.items():
        assert needle not in text, name


def test_short_secret_redaction_keeps_ordinary_words() -> None:
    values = ("ab", "t", "Q.z", "long-enough-secret")
    for value in values:
        remember(value)
    try:
        assert redact("credentials ab rejected; a cab, abc, ab.") == (
            "credentials *** rejected; a cab, abc, ***."
        )
        assert redact("can't stop 't' t") == "can't stop '***' ***"
        assert redact("got Q.z and QQz") == "got *** and QQz"
        encoded = base64.b64encode(b"long-enough-secret").decode()
        assert encoded not in redact(f"Basic {encoded}")
    finally:
        for value in values:
            forget(value)
    assert redact("can't stop 't' t") == "can't stop 't' t"  # no secret is kept forever


def test_telnyx_in_doubt_on_every_attempt_is_unknown_then_resent_with_its_key(
    tmp_path: Path,
) -> None:
    """Every Telnyx answer comes after the client timeout (the SMS was accepted each
    time, the key replayed): the messages used to end ``failed`` (retries
    exhausted), which ``retry-failed`` re-drives, after the key's 24 hours a second
    SMS. They are ``unknown`` now; ``--resend-unknown`` re-sends with the same keys."""
    with Sandbox(["telnyx"]) as sandbox:
        telnyx = sandbox.servers["telnyx"]
        telnyx.faults.stall_seconds = 0.6
        telnyx.faults.late_rate = 1.0
        channel = Channel(
            name="sms",
            provider="telnyx",
            template=Template(body="Hello there"),
            options=sandbox.channel_options("telnyx"),
            require_consent=False,
            timeout_seconds=0.2,
            concurrency=2,
            retry=RetryPolicy(retries=1, delay_minutes=0),
        )
        pipeline = Pipeline(
            "hostile",
            StaticSource.from_dicts(_phones(3)),
            [channel],
            base_dir=tmp_path,
            env={"SMS_API_TOKEN": telnyx.token},
            sleep=lambda s: None,
        )
        report = pipeline.run()
        states = collections.Counter(r.status.value for r in pipeline.results(report.run_id))
        assert states == {"unknown": 3}
        assert {r.reason for r in pipeline.results(report.run_id)} == {"in_doubt"}
        telnyx.faults.late_rate = 0.0
        resumed = pipeline.resume(report.run_id, resend_unknown=True)
        states = collections.Counter(r.status.value for r in pipeline.results(resumed.run_id))
        per = collections.Counter(m["to"] for m in telnyx.messages)
    assert states == {"sent": 3}
    assert len(per) == 3 and set(per.values()) == {1}, per


@pytest.mark.parametrize("retries", [0, 1])
def test_a_proxy_that_drops_the_tunnel_request_is_surely_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, retries: int
) -> None:
    """``HTTPS_PROXY`` names a proxy that closes the connection on ``CONNECT``: nothing
    reached the provider, so the message is retried (``proxy_error``), not recorded
    ``unknown`` as a request in doubt. Loopback ``http://`` never uses the proxy."""
    import socket
    import threading

    seen: list[bytes] = []
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                seen.append(conn.recv(4096))

    threading.Thread(target=serve, daemon=True).start()
    proxy = f"http://127.0.0.1:{listener.getsockname()[1]}"
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("NO_PROXY", "")
    try:
        with Sandbox(["sendgrid"]) as sandbox:
            options = dict(sandbox.channel_options("sendgrid"))
            clear = Channel(
                name="email",
                provider="sendgrid",
                template=Template(subject="Hi", body="Hello"),
                options=options,
                require_consent=False,
                retry=RetryPolicy(retries=retries, delay_minutes=0),
                timeout_seconds=2,
            )
            tunnel = Channel(
                name="mail2",
                provider="sendgrid",
                template=Template(subject="Hi", body="Hello"),
                options={**options, "base_url": options["base_url"].replace("http:", "https:")},
                require_consent=False,
                retry=RetryPolicy(retries=retries, delay_minutes=0),
                timeout_seconds=2,
                token_env="EMAIL_API_TOKEN",
            )
            pipeline = Pipeline(
                "proxied",
                StaticSource.from_dicts(_phones(1)),
                [clear, tunnel],
                base_dir=tmp_path,
                env=sandbox.env(),
                sleep=lambda s: None,
                rehearsal=True,
            )
            report = pipeline.run()
            accepted = sandbox.counts()["sendgrid"]
    finally:
        listener.close()
    [sent] = pipeline.results(report.run_id, "email")
    [failed] = pipeline.results(report.run_id, "mail2")
    assert sent.status.value == "sent" and accepted == 1  # straight to loopback
    assert failed.status.value == "failed", failed
    assert failed.error_code == "proxy_error"
    assert failed.attempts == retries + 1
    assert seen and all(s.startswith(b"CONNECT ") and b"Authorization" not in s for s in seen)


def test_a_secret_is_redacted_while_it_exists_and_forgotten_after() -> None:
    """The registry does not keep every token a long process (a scheduler, a test
    session) ever saw: a short token of a finished pipeline must not blank ordinary
    text ("'t' is undefined") for ever."""
    import gc

    from campaignkit import Secret

    secret = Secret("t")
    assert redact("'t' is undefined") == "'***' is undefined"
    other = Secret("t")  # two holders of the same value
    del secret
    gc.collect()
    assert redact("'t' is undefined") == "'***' is undefined"
    del other
    gc.collect()
    assert redact("'t' is undefined") == "'t' is undefined"
