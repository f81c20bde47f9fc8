"""The SMTP email channel against the loopback SMTP sandbox (aiosmtpd on 127.0.0.1)."""

from __future__ import annotations

import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from campaignkit._models import Message, Outcome, Secret
from campaignkit._notifier import ChannelSettings
from campaignkit.channels import smtp as smtp_module
from campaignkit.channels.smtp import MAX_RECONNECTS, SmtpConnection, SmtpNotifier
from campaignkit.exceptions import ConfigError, PermanentDeliveryError, TransientDeliveryError
from campaignkit.testing.sandbox.smtp import SmtpServer

SECRET = "smtp-s3cr3t-password"


def message(n: int, address: str | None = None, **kw: Any) -> Message:
    kw.setdefault("subject", f"Offer {n}")
    kw.setdefault("body", f"Hello customer {n}")
    kw.setdefault("html", f"<p>Hello customer {n}</p>")
    return Message(
        recipient_id=f"r{n}",
        channel="email",
        address=address if address is not None else f"user{n}@example.com",
        idempotency_key=f"run-1:email:r{n}",
        **kw,
    )


def make_notifier(
    server: SmtpServer,
    *,
    token_value: str | None = SECRET,
    timeout: float = 5.0,
    **options: Any,
) -> SmtpNotifier:
    settings = ChannelSettings(
        channel="email",
        options={**server.channel_options(), **options},
        token=Secret(token_value) if token_value is not None else None,
        timeout=timeout,
    )
    return SmtpNotifier(settings)


def send(notifier: SmtpNotifier, messages: list[Message]) -> list[Outcome]:
    conn = notifier.connect()
    try:
        return list(notifier.send_batch(conn, messages))
    finally:
        notifier.disconnect(conn)


@pytest.fixture
def server() -> Iterator[SmtpServer]:
    with SmtpServer(token=SECRET) as s:
        yield s


@pytest.fixture
def notifier(server: SmtpServer) -> SmtpNotifier:
    return make_notifier(server)


@pytest.fixture
def conn(notifier: SmtpNotifier) -> Iterator[SmtpConnection]:
    c = notifier.connect()
    yield c
    notifier.disconnect(c)


# -- happy path ---------------------------------------------------------------------------


def test_messages_arrive_as_mime_with_their_content(
    server: SmtpServer, notifier: SmtpNotifier
) -> None:
    batch = [
        message(0, name="Ada Lovelace", headers={"List-Unsubscribe": "<mailto:u@example.com>"}),
        message(1, subject="Ünïcode ✓", body="Grüße\nline two", html="<b>€</b>"),
        message(2, html=None),
        message(3, body="", html="<p>only html</p>"),
    ]
    outcomes = send(notifier, batch)
    assert [o.ok for o in outcomes] == [True] * 4
    assert [o.provider_message_id for o in outcomes] == [
        f"run-1-email-r{n}@sandbox.example" for n in range(4)
    ]
    by_to = {m["to"]: m for m in server.messages}
    first = by_to["user0@example.com"]
    assert first["id"] == outcomes[0].provider_message_id
    assert first["name"] == "Ada Lovelace"
    assert first["mail_from"] == SmtpServer.FROM_EMAIL
    assert (first["subject"], first["text"], first["html"]) == (
        "Offer 0",
        "Hello customer 0",
        "<p>Hello customer 0</p>",
    )
    assert first["headers"]["List-Unsubscribe"] == "<mailto:u@example.com>"
    assert first["headers"]["Content-Type"].startswith("multipart/alternative")
    second = by_to["user1@example.com"]
    assert (second["subject"], second["text"], second["html"]) == (
        "Ünïcode ✓",
        "Grüße\nline two",
        "<b>€</b>",
    )
    assert (by_to["user2@example.com"]["html"], by_to["user2@example.com"]["text"]) == (
        None,
        "Hello customer 2",
    )
    assert (by_to["user3@example.com"]["html"], by_to["user3@example.com"]["text"]) == (
        "<p>only html</p>",
        None,
    )


def test_options_shape_the_headers(server: SmtpServer) -> None:
    notifier = make_notifier(server, from_name="Shöp", reply_to="help@shop.example")
    send(notifier, [message(0)])
    headers = server.messages[0]["headers"]
    assert headers["From"] == f"Shöp <{SmtpServer.FROM_EMAIL}>"
    assert headers["Reply-To"] == "help@shop.example"


def test_non_ascii_address_uses_smtputf8(server: SmtpServer, notifier: SmtpNotifier) -> None:
    outcomes = send(notifier, [message(0, "jöhn@exämple.com")])
    assert outcomes[0].ok
    assert server.messages[0]["to"] == "jöhn@exämple.com"


def test_one_session_per_thread_is_reused(
    server: SmtpServer, notifier: SmtpNotifier, conn: SmtpConnection
) -> None:
    batch = [message(n) for n in range(SmtpNotifier.max_batch_size)]
    assert all(o.ok for o in notifier.send_batch(conn, batch))
    assert all(o.ok for o in notifier.send_batch(conn, [message(99)]))
    assert len(server.messages) == SmtpNotifier.max_batch_size + 1
    assert (server.connections, server.logins) == (1, 1)


def test_threads_get_their_own_sessions(server: SmtpServer, notifier: SmtpNotifier) -> None:
    results: dict[int, list[Outcome]] = {}

    def work(k: int) -> None:
        results[k] = send(notifier, [message(10 * k + n) for n in range(5)])

    threads = [threading.Thread(target=work, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(o.ok for outcomes in results.values() for o in outcomes)
    assert (server.connections, len(server.messages)) == (3, 15)


def test_disconnect_quits(server: SmtpServer, notifier: SmtpNotifier) -> None:
    conn = notifier.connect()
    notifier.send_batch(conn, [message(0)])
    notifier.disconnect(conn)
    assert conn.client is None
    notifier.disconnect(conn)  # twice is harmless
    assert server.drop_connections() == 0


# -- per-recipient answers ----------------------------------------------------------------


def test_refused_recipients_fail_alone(server: SmtpServer, notifier: SmtpNotifier) -> None:
    batch = [
        message(0),
        message(1, "gone@invalid.example"),
        message(2, "later@greylist.example"),
        message(3),
    ]
    outcomes = send(notifier, batch)
    assert outcomes[0].ok and outcomes[3].ok
    assert (outcomes[1].ok, outcomes[1].error_code, outcomes[1].transient) == (False, "550", False)
    assert (outcomes[2].ok, outcomes[2].error_code, outcomes[2].transient) == (False, "451", True)
    assert outcomes[1].error is not None and "RCPT" in outcomes[1].error
    assert sorted(m["to"] for m in server.messages) == ["user0@example.com", "user3@example.com"]
    assert server.connections == 1


@pytest.mark.parametrize(
    ("stage", "code", "transient"),
    [("mail", 452, True), ("mail", 553, False), ("data", 451, True), ("data", 554, False)],
)
def test_replies_at_mail_and_data(
    server: SmtpServer, notifier: SmtpNotifier, stage: str, code: int, transient: bool
) -> None:
    server.faults.fail_next(code, stage=stage)
    outcomes = send(notifier, [message(0), message(1)])
    assert (outcomes[0].ok, outcomes[0].error_code, outcomes[0].transient) == (
        False,
        str(code),
        transient,
    )
    assert outcomes[0].error is not None and stage.upper() in outcomes[0].error
    assert outcomes[1].ok
    assert [m["to"] for m in server.messages] == ["user1@example.com"]


def test_invalid_messages_fail_locally(server: SmtpServer, notifier: SmtpNotifier) -> None:
    batch = [
        message(0, "not an address"),
        message(1, headers={"Subject": "override"}),
        message(2, body="", html=None),
        message(3, headers={"X-Bad": "a\r\nBcc: victim@example.com"}),
        message(4),
    ]
    outcomes = send(notifier, batch)
    assert [o.error_code for o in outcomes[:4]] == [
        "invalid_address",
        "invalid_message",
        "invalid_message",
        "invalid_message",
    ]
    assert not any(o.transient for o in outcomes[:4])
    assert outcomes[4].ok
    assert [m["to"] for m in server.messages] == ["user4@example.com"]


# -- session errors -----------------------------------------------------------------------


def test_wrong_password_is_permanent_and_never_shown(server: SmtpServer) -> None:
    wrong = "wrong-password-do-not-print"
    notifier = make_notifier(server, token_value=wrong)
    with pytest.raises(PermanentDeliveryError) as info:
        send(notifier, [message(0)])
    exc = info.value
    assert exc.code == "535"
    assert "authentication failed" in str(exc)
    for text in (str(exc), repr(exc), repr(exc.args), repr(notifier)):
        assert wrong not in text
        assert SECRET not in text
    assert server.auth_failures >= 1  # smtplib tries PLAIN, then LOGIN
    assert server.messages == []


def test_no_login_when_the_server_wants_one(server: SmtpServer) -> None:
    notifier = make_notifier(server, token_value=None, username=None)
    outcomes = send(notifier, [message(0), message(1)])
    assert [(o.ok, o.error_code, o.transient) for o in outcomes] == [(False, "530", False)] * 2


def test_relay_without_auth() -> None:
    with SmtpServer(require_auth=False) as server:
        notifier = make_notifier(server, token_value=None, username=None)
        assert all(o.ok for o in send(notifier, [message(0)]))
        assert server.logins == 0


def test_starttls_is_required_when_asked(server: SmtpServer) -> None:
    notifier = make_notifier(server, security="starttls")
    with pytest.raises(PermanentDeliveryError) as info:
        send(notifier, [message(0)])
    assert info.value.code == "starttls_unsupported"
    assert server.logins == 0  # no password sent in clear text


def test_refused_connection_is_transient() -> None:
    with SmtpServer() as gone:
        options = gone.channel_options()
    notifier = SmtpNotifier(
        ChannelSettings(channel="email", options=options, token=Secret(SECRET), timeout=2)
    )
    with pytest.raises(TransientDeliveryError) as info:
        send(notifier, [message(0)])
    assert info.value.code == "connection_error"


@pytest.fixture(scope="module")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """A throwaway self-signed certificate for 127.0.0.1."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return str(cert), str(key)


def test_starttls_then_login(tls_cert: tuple[str, str]) -> None:
    with SmtpServer(token=SECRET, tls_cert=tls_cert) as server:
        assert server.channel_options()["security"] == "starttls"
        notifier = make_notifier(server)
        assert all(o.ok for o in send(notifier, [message(0), message(1)]))
        assert (server.connections, server.logins, len(server.messages)) == (1, 1, 2)


def test_certificate_that_does_not_verify_is_permanent(
    tls_cert: tuple[str, str], tmp_path: Path
) -> None:
    with SmtpServer(token=SECRET, tls_cert=tls_cert) as server:
        notifier = make_notifier(server, ca_file=None)  # the system's CAs
        with pytest.raises(PermanentDeliveryError) as info:
            send(notifier, [message(0)])
        assert info.value.code == "tls_verify"
        assert server.logins == 0


def test_server_that_wants_starttls_refuses_clear_text(tls_cert: tuple[str, str]) -> None:
    with SmtpServer(token=SECRET, tls_cert=tls_cert) as server:
        notifier = make_notifier(server, security="none", ca_file=None)
        with pytest.raises(PermanentDeliveryError) as info:
            send(notifier, [message(0)])
        assert info.value.code == "530"
        assert server.logins == 0


# -- reconnection and transient failures --------------------------------------------------


def test_reconnects_after_the_server_closed_an_idle_session(
    server: SmtpServer, notifier: SmtpNotifier, conn: SmtpConnection
) -> None:
    assert notifier.send_batch(conn, [message(0)])[0].ok
    assert server.drop_connections() == 1
    outcomes = notifier.send_batch(conn, [message(1), message(2)])
    assert all(o.ok for o in outcomes)
    assert (server.connections, server.logins) == (2, 2)
    assert len(server.messages) == 3


def test_reconnects_after_idle_timeout() -> None:
    with SmtpServer(token=SECRET, idle_timeout=0.2) as server:
        notifier = make_notifier(server)
        conn = notifier.connect()
        try:
            assert notifier.send_batch(conn, [message(0)])[0].ok
            threading.Event().wait(0.5)  # the server hangs up on the idle session
            assert notifier.send_batch(conn, [message(1)])[0].ok
        finally:
            notifier.disconnect(conn)
        assert server.connections >= 2
        assert len(server.messages) == 2


@pytest.mark.parametrize("fault", [421, "drop"])
def test_lost_before_data_is_resent_on_a_new_session(
    server: SmtpServer, notifier: SmtpNotifier, fault: int | str
) -> None:
    server.faults.fail_next(fault, stage="rcpt")
    outcomes = send(notifier, [message(0), message(1)])
    assert all(o.ok for o in outcomes)
    assert sorted(m["to"] for m in server.messages) == ["user0@example.com", "user1@example.com"]
    assert server.connections == 2


def test_lost_during_data_is_transient_for_that_message(
    server: SmtpServer, notifier: SmtpNotifier
) -> None:
    server.faults.fail_next("drop", stage="data")
    outcomes = send(notifier, [message(0), message(1)])
    assert (outcomes[0].ok, outcomes[0].transient, outcomes[0].error_code) == (
        False,
        True,
        "connection_lost",
    )
    assert outcomes[1].ok
    assert server.connections == 2


def test_connection_lost_again_and_again_is_transient(server: SmtpServer) -> None:
    server.faults.fail_next(*["drop"] * (MAX_RECONNECTS + 1))
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message(0), message(1)])
    assert info.value.code == "connection_lost"
    assert server.connections == MAX_RECONNECTS + 1


def test_connection_lost_after_a_sent_message_gives_outcomes(server: SmtpServer) -> None:
    server.faults.fail_next("pass", *["drop"] * (MAX_RECONNECTS + 1))
    outcomes = send(make_notifier(server), [message(0), message(1), message(2)])
    assert outcomes[0].ok
    assert [(o.ok, o.transient, o.error_code) for o in outcomes[1:]] == [
        (False, True, "connection_lost")
    ] * 2


def test_stall_beyond_the_timeout_is_transient(server: SmtpServer) -> None:
    server.faults.stall_seconds = 2.0
    server.faults.fail_next("stall")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server, timeout=0.5), [message(0), message(1)])
    assert info.value.code == "timeout"
    assert server.messages == []


def test_stall_after_a_sent_message_gives_outcomes(server: SmtpServer) -> None:
    server.faults.stall_seconds = 2.0
    server.faults.fail_next("pass", "stall")
    outcomes = send(make_notifier(server, timeout=0.5), [message(0), message(1), message(2)])
    assert outcomes[0].ok
    assert [(o.ok, o.transient, o.error_code) for o in outcomes[1:]] == [
        (False, True, "timeout")
    ] * 2


# -- configuration ------------------------------------------------------------------------


def _settings(
    options: dict[str, Any], token: str | None = SECRET, env: dict[str, str] | None = None
) -> ChannelSettings:
    base = {"host": "smtp.example.com", "from_email": "a@shop.example", "username": "u"}
    return ChannelSettings(
        channel="email",
        options={**base, **options},
        token=Secret(token) if token is not None else None,
        env=env or {},
    )


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"security": "none"}, "security"),
        ({"security": "ssl"}, "security"),
        ({"port": 70000}, "port"),
        ({"port": "25"}, "port"),
        ({"from_email": "nobody"}, "from_email"),
        ({"timeout": 0}, "timeout"),
        ({"hostname": "x"}, "hostname"),
        ({"ca_file": "no-such-bundle.pem"}, "ca_file"),
    ],
)
def test_config_errors_name_the_key(options: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        SmtpNotifier(_settings(options))
    assert info.value.path == f"channels.email.options.{path}"


def test_clear_text_is_for_loopback_only() -> None:
    with pytest.raises(ConfigError, match="clear-text"):
        SmtpNotifier(_settings({"security": "none", "host": "10.0.0.8"}))
    for host in ("127.0.0.1", "localhost", "::1"):
        assert SmtpNotifier(_settings({"security": "none", "host": host})).port == 25


def test_default_ports_follow_security() -> None:
    assert SmtpNotifier(_settings({})).port == 587
    assert SmtpNotifier(_settings({"security": "tls"})).port == 465


def test_password_and_username_go_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMTP_USERNAME", "never-read")  # only the env given counts
    with pytest.raises(ConfigError) as info:
        SmtpNotifier(_settings({"username": None}))
    assert info.value.path == "channels.email.options.username"
    with pytest.raises(ConfigError):
        SmtpNotifier(_settings({}, token=None))
    env = {"MY_SMTP_USER": "from-env"}
    notifier = SmtpNotifier(_settings({"username": None, "username_env": "MY_SMTP_USER"}, env=env))
    assert notifier.username == "from-env"
    assert SECRET not in repr(notifier)


def test_channel_options_point_at_the_server(server: SmtpServer) -> None:
    assert server.channel_options() == {
        "host": "127.0.0.1",
        "port": server.port,
        "security": "none",
        "username": SmtpServer.DEFAULT_USERNAME,
        "from_email": SmtpServer.FROM_EMAIL,
    }
    assert SmtpServer.provider == SmtpNotifier.name == "smtp"


def test_registers_through_the_hook() -> None:
    registered: list[Any] = []
    smtp_module.campaignkit_register_channels(registered.append)
    assert registered == [SmtpNotifier]
    assert (SmtpNotifier.address_field, SmtpNotifier.token_required) == ("email", False)
