"""The sandbox servers answer whatever arrives on the wire as the provider would: odd
framing (a bad ``Content-Length``, a chunked body), bodies the parsers choke on
(JSON nested too deeply, a form that is not UTF-8) and gzip bodies Expo accepts get an
answer, never a dropped connection with a traceback on the sandbox's stderr. And
``campaignkit sandbox`` says which server cannot start when a port is taken. A message
the journal cannot take is refused with the provider's 5xx (451 for SMTP), never
accepted without being journaled."""

from __future__ import annotations

import gzip
import json
import smtplib
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import requests

from campaignkit.testing.sandbox import Faults, Sandbox
from campaignkit.testing.sandbox.expo import ExpoServer
from campaignkit.testing.sandbox.onesignal import OneSignalServer
from campaignkit.testing.sandbox.sendgrid import SendGridServer
from campaignkit.testing.sandbox.telnyx import TelnyxServer
from campaignkit.testing.sandbox.twilio import TwilioServer

TOKEN = "sandbox-token"
DEEP = "[" * 100_000 + "]" * 100_000
TO = "+14155550101"


def exchange(port: int, raw: bytes) -> bytes:
    """Send ``raw`` on a new connection; everything answered before it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(raw)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
            if b"\r\n\r\n" in received:
                head, _, body = received.partition(b"\r\n\r\n")
                length = next(
                    (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                     if line.lower().startswith(b"content-length:")),
                    0,
                )  # fmt: skip
                if len(body) >= length:
                    break
        return received


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer() as server:
        yield server


def twilio_url(server: TwilioServer) -> str:
    return f"{server.base_url}/2010-04-01/Accounts/{server.account_sid}/Messages.json"


@pytest.mark.parametrize("length", [b"-1", b"abc", b"1e3", b"+5"])
def test_a_bad_content_length_is_a_400(length: bytes, capfd: pytest.CaptureFixture[str]) -> None:
    with SendGridServer() as server:
        answer = exchange(
            server.port,
            b"POST /v3/mail/send HTTP/1.1\r\nHost: x\r\nContent-Length: " + length + b"\r\n\r\n",
        )
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert "Traceback" not in capfd.readouterr().err


def test_a_chunked_body_is_read(twilio: TwilioServer) -> None:
    form = [b"To=%2B14155550101&", b"From=%2B15005550006&", b"Body=hello"]
    reply = requests.post(
        twilio_url(twilio),
        data=iter(form),  # requests sends an iterator as Transfer-Encoding: chunked
        auth=(twilio.account_sid, TOKEN),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    [message] = twilio.messages
    assert (message["to"], message["body"]) == (TO, "hello")


@pytest.mark.parametrize(
    ("server_class", "path", "headers", "says"),
    [
        (SendGridServer, "/v3/mail/send", {"Authorization": f"Bearer {TOKEN}"}, "errors"),
        (TelnyxServer, "/v2/messages", {"Authorization": f"Bearer {TOKEN}"}, "10015"),
        (OneSignalServer, "/notifications", {"Authorization": f"Key {TOKEN}"}, "errors"),
        (ExpoServer, "/--/api/v2/push/send", {}, "VALIDATION_ERROR"),
        (ExpoServer, "/--/api/v2/push/getReceipts", {}, "VALIDATION_ERROR"),
    ],
)
def test_json_nested_too_deeply_is_the_providers_400(
    server_class: Any, path: str, headers: dict[str, str], says: str,
    capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    with server_class() as server:
        reply = requests.post(
            server.base_url + path,
            data=DEEP,
            headers={**headers, "Content-Type": "application/json"},
            timeout=10,
        )
        assert reply.status_code == 400
        assert says in reply.text
        assert server.messages == []
    assert "RecursionError" not in capfd.readouterr().err


def test_twilio_bodies_the_parsers_choke_on_get_answers(
    twilio: TwilioServer, capfd: pytest.CaptureFixture[str]
) -> None:
    auth = (twilio.account_sid, TOKEN)
    deep = requests.post(
        twilio_url(twilio),
        data={"To": TO, "From": twilio.from_number, "ContentSid": "HX" + "0" * 32,
              "ContentVariables": DEEP},
        auth=auth, timeout=10,
    )  # fmt: skip
    assert (deep.status_code, deep.json()["code"]) == (400, 21656)
    not_utf8 = requests.post(
        twilio_url(twilio),
        data=b"To=%2B14155550101&From=%2B15005550006&Body=caf\xe9",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        auth=auth,
        timeout=10,
    )
    assert not_utf8.status_code == 201
    assert twilio.messages[0]["body"] == "caf\ufffd"
    err = capfd.readouterr().err
    assert "Traceback" not in err


def test_expo_takes_a_gzip_body() -> None:
    messages = [{"to": "ExponentPushToken[abc]", "body": "Hi"}]
    with ExpoServer() as server:
        reply = requests.post(
            f"{server.base_url}/--/api/v2/push/send",
            data=gzip.compress(json.dumps(messages).encode()),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            timeout=10,
        )
        assert reply.status_code == 200, reply.text
        [ticket] = reply.json()["data"]
        assert ticket["status"] == "ok"
        assert [m["id"] for m in server.messages] == [ticket["id"]]
        broken = requests.post(
            f"{server.base_url}/--/api/v2/push/send",
            data=b"not gzip",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            timeout=10,
        )
        assert (broken.status_code, broken.json()["errors"][0]["code"]) == (
            400,
            "VALIDATION_ERROR",
        )


@pytest.mark.parametrize("provider", ["sendgrid", "smtp"])
def test_a_taken_port_names_the_server_and_port(provider: str) -> None:
    if provider == "smtp":
        pytest.importorskip("aiosmtpd")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "campaignkit", "sandbox",
             "--provider", "expo", "--provider", provider, "--port", f"{provider}={port}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 3
    [line] = result.stderr.splitlines()  # one line: no traceback from the server's clean-up
    assert f"the {provider} server cannot listen on port {port}" in line


# -- a journal that cannot be written: nothing accepted that is not journaled ------------

needs_dev_full = pytest.mark.skipif(
    not Path("/dev/full").exists(), reason="needs /dev/full (a device that is always full)"
)


@needs_dev_full
def test_a_message_the_journal_cannot_take_is_refused_not_half_accepted(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    # The server recorded the message, then the journal write failed: the client got
    # a dropped connection (and retried: a duplicate), the message was counted as
    # accepted but missing from the journal, and stopping raised a traceback.
    (tmp_path / "twilio.jsonl").symlink_to("/dev/full")
    with Sandbox(["twilio"], record_to=tmp_path) as sandbox:
        server = sandbox.servers["twilio"]
        reply = requests.post(
            twilio_url(server),
            data={"To": TO, "From": server.from_number, "Body": "hi"},
            auth=(server.account_sid, TOKEN),
            timeout=10,
        )
        assert (reply.status_code, reply.json()["code"]) == (500, 20500)
        assert server.messages == []
        assert sandbox.counts() == {"twilio": 0}
    err = capfd.readouterr().err
    assert f"cannot write to the journal {tmp_path / 'twilio.jsonl'}" in err
    assert "Traceback" not in err


@needs_dev_full
def test_smtp_answers_451_when_the_journal_cannot_take_the_message(tmp_path: Path) -> None:
    pytest.importorskip("aiosmtpd")
    (tmp_path / "smtp.jsonl").symlink_to("/dev/full")
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "s"
    message.set_content("hello")
    with Sandbox(["smtp"], record_to=tmp_path) as sandbox:
        server = sandbox.servers["smtp"]
        with smtplib.SMTP(server.HOST, server.port, timeout=10) as client:
            client.login(server.username, server.token)
            with pytest.raises(smtplib.SMTPDataError) as info:
                client.send_message(message)
        assert info.value.smtp_code == 451
        assert server.messages == []


def test_the_journal_keeps_whole_lines_from_concurrent_senders(tmp_path: Path) -> None:
    with Sandbox(["sendgrid"], record_to=tmp_path) as sandbox:
        server = sandbox.servers["sendgrid"]

        def send(worker: int) -> None:
            with requests.Session() as session:
                for batch in range(10):
                    mail = {
                        "from": {"email": "a@shop.example"},
                        "subject": "s",
                        "content": [{"type": "text/plain", "value": "x" * 5000}],
                        "personalizations": [
                            {"to": [{"email": f"u{worker}-{batch}-{i}@example.com"}]}
                            for i in range(20)
                        ],
                    }
                    reply = session.post(
                        f"{server.base_url}/v3/mail/send",
                        json=mail,
                        headers={"Authorization": f"Bearer {TOKEN}"},
                        timeout=30,
                    )
                    assert reply.status_code == 202

        threads = [threading.Thread(target=send, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lines = (tmp_path / "sendgrid.jsonl").read_text().splitlines()
        assert len(lines) == len(server.messages) == 8 * 10 * 20
        assert len({json.loads(line)["to"] for line in lines}) == 1600


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("latency", 1e308),
        ("stall_seconds", -1.0),
        ("retry_after", float("inf")),
        ("error_rate", float("nan")),
        ("drop_rate", 1.5),
        ("rate_limit", 0),
        ("error_status", 200),
        ("late_rate", "0.5"),
    ],
)
def test_faults_refuse_values_that_would_crash_the_server(field: str, value: object) -> None:
    """From Python as from the CLI: a fault the server cannot act on (time.sleep
    overflows on 1e308; a probability of NaN never fires) is refused when set, at
    construction and on assignment, rather than crashing every request's thread."""
    with pytest.raises((ValueError, TypeError), match=field):
        Faults(**{field: value})
    faults = Faults()
    with pytest.raises((ValueError, TypeError), match=field):
        setattr(faults, field, value)


def test_a_listen_with_nothing_to_accept_never_blocks_the_server() -> None:
    """A client that connects and resets before the server accepts leaves nothing to
    accept: the server's loop must go on (else ``stop()`` hangs for ever, as a CI run
    once did in a fixture's teardown). Handling a request when none is queued returns
    at once instead of waiting for the next client."""
    with TwilioServer() as server:
        listener = server._server
        assert listener is not None
        done = threading.Event()

        def handle_one() -> None:
            listener._handle_request_noblock()  # what serve_forever does when readable
            done.set()

        threading.Thread(target=handle_one, daemon=True).start()
        assert done.wait(5), "accept() blocked with no client queued"
        # ...and the server still answers.
        reply = requests.get(server.base_url + "/", timeout=5)
        assert reply.status_code in (401, 404, 405)
