"""Tokens only where they are meant to go (issue 9 item 9).

* base URLs are read as the HTTP client reads them: the host the check approves is
  the host a request reaches (checked against a loopback server recording ``Host``);
* tokens are checked when they are read (named, never quoted);
* credentials are redacted from every stored or printed text.

No traffic leaves 127.0.0.1: only URLs the check accepts *and* whose host is
127.0.0.1 or localhost on the recording server's port are ever requested.
"""

from __future__ import annotations

import base64
import http.server
import logging
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from campaignkit import Channel, Pipeline, Template
from campaignkit._http import HttpNotifier, check_base_url, is_loopback
from campaignkit._models import DeliveryResult, DeliveryStatus, Outcome, Secret
from campaignkit._notifier import ChannelSettings
from campaignkit._redact import redact, remember, token_problem
from campaignkit.exceptions import ConfigError, PermanentDeliveryError
from campaignkit.testing import StaticSource

# -- a loopback server that records how it was reached -------------------------------------


class _Recorder(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append(  # type: ignore[attr-defined]
            {
                "host": self.headers.get("Host"),
                "path": self.path,
                "peer": self.client_address[0],
                "local": self.connection.getsockname()[0],
                "authorization": self.headers.get("Authorization"),
            }
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture(scope="module")
def recorder() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.daemon_threads = True
    server.seen = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


class _Probe(HttpNotifier):
    name = "probe"
    default_base_url = "https://api.example.com"

    def send_batch(self, conn: requests.Session, messages: Any) -> list[Outcome]:
        return []


def _probe(url: str, token: str = "probe-secret-token-1") -> _Probe:
    return _Probe(ChannelSettings(channel="probe", options={"base_url": url}, token=Secret(token)))


# -- the URL check: fixed cases ------------------------------------------------------------

ACCEPTED = {
    "http://127.0.0.1:8080": ("http", "127.0.0.1", 8080),
    "http://127.0.0.1:8080/": ("http", "127.0.0.1", 8080),
    "http://127.5.6.7": ("http", "127.5.6.7", None),
    "http://localhost:1/prefix": ("http", "localhost", 1),
    "HTTP://LocalHost:5": ("http", "localhost", 5),
    "http://[::1]:80": ("http", "::1", 80),
    "https://api.sendgrid.com": ("https", "api.sendgrid.com", None),
    "https://api.eu.sendgrid.com/": ("https", "api.eu.sendgrid.com", None),
    "https://[::1]": ("https", "::1", None),
    "https://127.1": ("https", "127.1", None),  # https: whatever it resolves to, TLS checks it
}

REFUSED = {
    "http://vm:40333\\@127.0.0.1:40333": "backslash",  # the example
    "https://vm\\@api.sendgrid.com": "backslash",
    "http://u:p@127.0.0.1": "userinfo",
    "http://@127.0.0.1": "userinfo",
    "https://token@api.sendgrid.com": "userinfo",
    "http://127.0.0.1 @vm": "whitespace",
    "http://127.0.0.1\t.x": "whitespace",
    "http://127.0.0.1\n": "whitespace",
    "http://127.0.0.1:\uff18\uff10": "non-ASCII",  # fullwidth digits
    "http://ьфи.localhost": "non-ASCII",
    "http://127.0.0.1:80#@vm": "fragment",
    "http://127.0.0.1/?next=@vm": "query",
    "http://%31%32%37.0.0.1": "%-encoded",
    "http://[::1%25lo]": "%-encoded",
    "http://127.0.0.1.evil.com": "clear-text",
    "http://localhost.": "clear-text",
    "http://a.localhost": "clear-text",
    "http://127.1": "clear-text",
    "http://0x7f.1": "clear-text",
    "http://2130706433": "clear-text",
    "http://0.0.0.0": "clear-text",
    "http://[::ffff:127.0.0.1]": "clear-text",
    "http://vm:40333": "clear-text",
    "http://127.0.0.1:": "port",
    "http://127.0.0.1:0": "port",
    "http://127.0.0.1:99999": "port",
    "http://127.0.0.1:+80": "port",
    "http://127.0.0.1:8o": "port",
    "ftp://127.0.0.1": "http(s) URL",
    "//127.0.0.1": "http(s) URL",
    "http:127.0.0.1": "http(s) URL",
    "http:///127.0.0.1": "http(s) URL",
    "127.0.0.1:8080": "http(s) URL",
    "https://exa_mple.com": "host name",
    "https://-x.com": "host name",
    "https://a..b": "host name",
}


@pytest.mark.parametrize(("url", "expected"), sorted(ACCEPTED.items()))
def test_accepted_base_urls(url: str, expected: tuple[str, str, int | None]) -> None:
    checked = check_base_url(url, path="p")
    assert checked == url.rstrip("/")
    prepared = requests.Request("POST", checked + "/x").prepare().url
    assert prepared is not None
    parts = urlsplit(prepared)
    assert (parts.scheme, parts.hostname, parts.port) == expected


@pytest.mark.parametrize(("url", "why"), sorted(REFUSED.items()))
def test_refused_base_urls(url: str, why: str) -> None:
    with pytest.raises(ConfigError) as info:
        check_base_url(url, path="channels.email.options.base_url")
    text = str(info.value)
    assert text.startswith("channels.email.options.base_url: ")
    assert why in text
    if "@" in url.split("#")[0].split("?")[0] and "\\" not in url:
        assert url not in text  # a URL with userinfo is never quoted


def test_base_url_must_be_a_string() -> None:
    with pytest.raises(ConfigError, match="expected a string"):
        _Probe(ChannelSettings(channel="probe", options={"base_url": 5}))


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LOCALHOST", True),
        ("127.0.0.1", True),
        ("127.255.0.9", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost.", False),
        ("a.localhost", False),
        ("127.0.0.1.evil.com", False),
        ("127.1", False),
        ("0x7f000001", False),
        ("::ffff:127.0.0.1", False),
        ("0.0.0.0", False),
        ("", False),
        ("[]", False),
        ("vm", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


# -- the URL check: approved host == reached host (property test) ------------------------

_PIECES = st.sampled_from(
    ["\\", "@", ":", "/", "#", "?", "%", "%2e", ".", "[", "]", " ", "\t", "::1", "vm"]
)
_HOSTS = st.sampled_from(
    ["127.0.0.1", "localhost", "vm", "127.0.0.1.vm", "[::1]", "LOCALHOST", "127.1", "0.0.0.0"]
)


@st.composite
def url_ish(draw: st.DrawFn, port: int) -> str:
    """scheme, host, port and path, with ambiguous pieces (``\\``, ``@``, ``#``...,
    or another host) spliced in anywhere."""
    scheme = draw(st.sampled_from(["http://", "https://", "HTTP://", "http:/", "http:", ""]))
    port_text = draw(st.sampled_from([f":{port}", f":{port}", "", ":", f":{port}0", ":0"]))
    path = draw(st.sampled_from(["", "/", "/prefix", "/v3/"]))
    parts = [scheme, draw(_HOSTS), port_text, path]
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.integers(1, len(parts)))
        parts.insert(where, draw(st.one_of(_PIECES, _HOSTS)))
    return "".join(parts)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
@example(data=None)
def test_the_host_the_check_approves_is_the_host_the_request_reaches(
    recorder: http.server.ThreadingHTTPServer, data: st.DataObject | None
) -> None:
    port = recorder.server_address[1]
    # data is None: the example
    url = f"http://vm:{port}\\@127.0.0.1:{port}" if data is None else data.draw(url_ish(port))
    try:
        approved = check_base_url(url, path="p")
    except ConfigError:
        return
    prepared = requests.Request("POST", approved + "/v1/x").prepare().url
    assert prepared is not None
    reached = urlsplit(prepared)
    check = urlsplit(approved)
    # What the client connects to is what the check read.
    assert (reached.scheme, reached.hostname, reached.port) == (
        check.scheme.lower(),
        check.hostname,
        check.port,
    )
    host = reached.hostname or ""
    if reached.scheme == "http":
        assert is_loopback(host), url
    # Only loopback URLs on the recording server's port are ever requested.
    if reached.scheme != "http" or host not in ("127.0.0.1", "localhost"):
        return
    if reached.port != port:
        return
    _reach(recorder, url, host)
    REACHED.append(url)


#: URLs the property test actually requested (see the test after it).
REACHED: list[str] = []


def _reach(recorder: http.server.ThreadingHTTPServer, url: str, host: str) -> None:
    """Send one request through a channel session to ``url``; check where it landed."""
    port = recorder.server_address[1]
    notifier = _probe(url)
    before = len(recorder.seen)  # type: ignore[attr-defined]
    session = notifier.connect()
    try:
        session.post(notifier.base_url + "/v1/x", data=b"{}", timeout=5)
    finally:
        notifier.disconnect(session)
    [seen] = recorder.seen[before:]  # type: ignore[attr-defined]
    assert seen["host"].lower() == f"{host}:{port}"
    assert seen["local"] == "127.0.0.1"
    assert seen["path"].endswith("/v1/x")


@pytest.mark.parametrize(
    ("template", "host"),
    [
        ("http://127.0.0.1:{port}", "127.0.0.1"),
        ("http://localhost:{port}/", "localhost"),
        ("HTTP://LOCALHOST:{port}/prefix", "localhost"),
    ],
)
def test_approved_loopback_urls_reach_the_loopback_server(
    recorder: http.server.ThreadingHTTPServer, template: str, host: str
) -> None:
    url = template.format(port=recorder.server_address[1])
    check_base_url(url, path="p")
    _reach(recorder, url, host)


def test_the_property_test_did_send_requests() -> None:
    # Runs after the property test (file order): the fuzzing reached the server.
    assert REACHED, "no generated URL was accepted and requested"


def test_a_loopback_base_url_never_goes_through_a_proxy(
    recorder: http.server.ThreadingHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy would receive the clear-text token: http:// (loopback) ignores proxies.
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    port = recorder.server_address[1]
    notifier = _probe(f"http://127.0.0.1:{port}")
    session = notifier.connect()
    try:
        assert session.proxies == {}
        before = len(recorder.seen)  # type: ignore[attr-defined]
        session.post(notifier.base_url + "/p", data=b"", timeout=5)
        assert len(recorder.seen) == before + 1  # type: ignore[attr-defined]
    finally:
        notifier.disconnect(session)


def test_an_https_base_url_keeps_the_environment_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    monkeypatch.setenv("https_proxy", "http://proxy.invalid:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = _probe("https://api.example.com").connect()  # nothing is sent
    try:
        assert session.proxies.get("https") == "http://proxy.invalid:3128"
    finally:
        session.close()


# -- tokens are checked when read ---------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("tok-secret-value\n", "ends with a newline (a secret read from a file?)"),
        ("tok-secret-value\r\n", "ends with a newline"),
        (" tok-secret-value", "whitespace"),
        ("tok-secret-value ", "whitespace"),
        ("tok-secret\nvalue", "line break"),
        ("tok-secret\x00value", "control character (U+0000)"),
        ("tok-secret\x7fvalue", "control character (U+007F)"),
        ("tok-secret\u2019value", "not Latin-1"),
    ],
)
def test_a_bad_token_is_a_config_error_naming_the_variable(value: str, problem: str) -> None:
    assert token_problem(value) is not None
    pipeline = Pipeline(
        "p",
        StaticSource.from_dicts([{"id": "C1", "phone": "+14155550101"}]),
        [
            Channel(
                name="sms",
                provider="telnyx",
                template=Template(body="Hi"),
                options={"from": "+15055550100"},
                require_consent=False,
            )
        ],
        env={"SMS_API_TOKEN": value},
    )
    with pytest.raises(ConfigError) as info:
        pipeline.validate()
    text = str(info.value)
    assert "SMS_API_TOKEN" in text and problem in text
    assert "tok-secret" not in text and "value" not in text.split("SMS_API_TOKEN")[0]
    assert info.value.path == "channels.sms.token_env"


@pytest.mark.parametrize("value", ["abc", "a b", "with:colon", "ünïcödé-latin1", "x" * 200])
def test_good_tokens_pass(value: str) -> None:
    assert token_problem(value) is None


def test_an_http_notifier_refuses_a_token_it_cannot_send() -> None:
    # ChannelSettings built by hand (a plugin's test) bypass Pipeline's check.
    with pytest.raises(ConfigError) as info:
        _probe("https://api.example.com", token="probe-secret-token-1\n")
    assert "newline" in str(info.value)
    assert "probe-secret-token-1" not in str(info.value)


def test_the_cli_names_the_variable_never_the_value(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from campaignkit.cli import main

    (tmp_path / "seg.csv").write_text("id,phone\nC1,+14155550101\n")
    config = tmp_path / "c.toml"
    config.write_text(
        '[pipeline]\nname = "t"\n[source]\ntype = "csv"\npath = "seg.csv"\n'
        '[channels.sms]\nprovider = "telnyx"\nrequire_consent = false\n'
        '[channels.sms.template]\nbody = "Hi"\n[channels.sms.options]\nfrom = "+15055550100"\n'
    )
    result = CliRunner().invoke(
        main, ["validate", str(config)], env={"SMS_API_TOKEN": "KEY-file-mounted-secret\n"}
    )
    assert result.exit_code == 2, result.output
    assert "SMS_API_TOKEN" in result.stderr and "newline" in result.stderr
    assert "KEY-file-mounted-secret" not in result.output


# -- redaction ----------------------------------------------------------------------------

SECRET = "SG.redact-me-0123456789abcdef"
SID = "AC" + "1" * 32


def _basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    "text",
    [
        f"echo: Authorization: Bearer {SECRET}",
        f'{{"headers": {{"Authorization": "Bearer {SECRET}"}}}}',
        f"{{'Authorization': 'Basic {_basic(SID, SECRET)}'}}",
        f"credentials {_basic(SID, SECRET)} rejected",
        f"credentials {_basic('AC1', SECRET)} rejected",
        f"credentials {_basic('AC12', SECRET)} rejected",
        f"credentials {base64.b64encode(SECRET.encode()).decode()} rejected",
        f"credentials {base64.urlsafe_b64encode(SECRET.encode()).decode()} rejected",
        f"Invalid leading whitespace in header value: {f'Bearer {SECRET}'!r}",
        f"raw token {SECRET} in a body",
        f"url-encoded key%3D{SECRET.replace('.', '%2E')}",
        f"repr {SECRET!r}",
        f"?api_key={SECRET}&x=1",
    ],
)
def test_redact_removes_a_known_secret_in_every_form(text: str) -> None:
    remember(SECRET)
    scrubbed = redact(text)
    assert SECRET not in scrubbed
    assert "redact-me" not in scrubbed
    assert _basic(SID, SECRET)[8:-4] not in scrubbed
    assert base64.b64encode(SECRET.encode()).decode()[2:-4] not in scrubbed


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abcdef", "Authorization: ***"),
        ("Bearer some.jwt.value rejected", "Bearer *** rejected"),
        ("header 'Basic QUMxMjM6c2VjcmV0'", "header 'Basic ***'"),
        ("Key os_v2_app_abcdefghijklmnop1234 refused", "Key *** refused"),
        ("password=hunter2&x=1", "password=***&x=1"),
        ('{"api_key": "zzz"}', '{"api_key": "***"}'),
        ("Basic authentication failed", "Basic authentication failed"),
        ("Key must be a UUID", "Key must be a UUID"),
        ("Invalid 'to' address (/to)", "Invalid 'to' address (/to)"),
        (
            "HTTP 400: Does not contain a valid address.",
            "HTTP 400: Does not contain a valid address.",
        ),
    ],
)
def test_redact_generic_shapes(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_stored_texts_are_redacted_at_construction() -> None:
    remember(SECRET)
    outcome = Outcome.failed(f"HTTP 401: Authorization: Bearer {SECRET}", code="401")
    result = DeliveryResult("email", "C1", DeliveryStatus.FAILED, error=f"boom {SECRET}")
    error = PermanentDeliveryError(f"HTTP 400: echo {SECRET}", code="400")
    for text in (outcome.error, result.error, str(error), repr(error), str(error.args)):
        assert text is not None and SECRET not in text


def test_campaignkit_errors_are_redacted_whatever_built_them() -> None:
    remember(SECRET)
    error = ConfigError(f"bad value {SECRET}", path="channels.email.options.x")
    assert SECRET not in str(error)


def test_log_records_and_tracebacks_are_redacted(caplog: pytest.LogCaptureFixture) -> None:
    remember(SECRET)
    log = logging.getLogger("campaignkit")
    try:
        raise ValueError(f"Invalid header value: 'Bearer {SECRET}\\n'")
    except ValueError:
        with caplog.at_level(logging.INFO, logger="campaignkit"):
            log.exception("notifier %s raised with %s", "probe", SECRET)
    text = caplog.text
    assert "notifier probe raised" in text and "ValueError" in text
    assert SECRET not in text


def test_the_default_error_message_redacts_the_channel_token() -> None:
    notifier = _probe("https://api.example.com", token="probe-secret-token-2")
    response = requests.Response()
    response.status_code = 400
    response._content = b'{"error": "bad key probe-secret-token-2", "auth": "Bearer x1234567"}'
    message = notifier.error_message(response)
    assert "probe-secret-token-2" not in message and "x1234567" not in message
    assert message.startswith("HTTP 400: ")


def test_requests_errors_leave_a_channel_session_without_the_token() -> None:
    # A header requests refuses is quoted in its error: a channel's session scrubs it.
    notifier = _probe("https://api.example.com", token="probe-secret-token-3")
    session = notifier.connect()
    try:
        with pytest.raises(requests.exceptions.InvalidHeader) as info:
            session.post(
                "https://api.example.invalid/x",
                headers={"X-Auth": "probe-secret-token-3\n"},
                timeout=1,
            )
    finally:
        notifier.disconnect(session)
    assert "probe-secret-token-3" not in str(info.value)
    assert info.value.__context__ is None or "probe-secret-token-3" not in str(
        info.value.__context__
    )
