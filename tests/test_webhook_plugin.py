"""The example third-party plugin ``examples/campaignkit-webhook``, installed as a package.

These tests need the package installed (``pip install ./examples/campaignkit-webhook``;
CI does it), because what they prove is discovery through the ``campaignkit`` entry
point, not an import.
"""

from __future__ import annotations

import importlib.metadata
import json
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner

from campaignkit import (
    Channel,
    ConfigError,
    Pipeline,
    Registry,
    RetryPolicy,
    Template,
    get_plugin_manager,
)
from campaignkit._ledger import SqliteLedger
from campaignkit.cli import main
from campaignkit.testing import StaticSource

webhook = pytest.importorskip(
    "campaignkit_webhook",
    reason="the example plugin is not installed: pip install ./examples/campaignkit-webhook",
)
try:
    DIST_VERSION = importlib.metadata.version("campaignkit-webhook")
except importlib.metadata.PackageNotFoundError:  # importable, but not installed
    pytest.skip(
        "campaignkit_webhook is importable but not installed as a distribution: "
        "pip install ./examples/campaignkit-webhook",
        allow_module_level=True,
    )

TOKEN = "hook-secret-token"


@pytest.fixture(autouse=True)
def _no_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CAMPAIGNKIT_BLOCK_PLUGINS", raising=False)


# -- discovery -------------------------------------------------------------------------------


def test_discovered_through_the_entry_point() -> None:
    registry = Registry(get_plugin_manager())
    info = registry.channels["webhook"]
    assert info.factory is webhook.WebhookNotifier
    assert info.plugin == "webhook"  # the entry point's name
    assert info.package == f"campaignkit-webhook {DIST_VERSION}" == "campaignkit-webhook 0.1.0"


def test_not_loaded_without_entry_points() -> None:
    registry = Registry(get_plugin_manager(load_entrypoints=False))
    assert "webhook" not in registry.channels


def test_listed_by_campaignkit_channels() -> None:
    result = CliRunner().invoke(main, ["channels", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["provider"]: row for row in json.loads(result.stdout)["channels"]}
    assert rows["webhook"]["package"] == "campaignkit-webhook 0.1.0"
    assert rows["webhook"]["max_batch_size"] == 500
    assert rows["webhook"]["token_required"] is False
    table = CliRunner().invoke(main, ["channels"])
    assert "campaignkit-webhook 0.1.0" in table.stdout


def test_blocked_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert "webhook" not in Registry(get_plugin_manager(block=["webhook"])).channels
    cli = CliRunner().invoke(main, ["channels", "--json", "--block-plugin", "webhook"])
    assert "webhook" not in {r["provider"] for r in json.loads(cli.stdout)["channels"]}

    monkeypatch.setenv("CAMPAIGNKIT_BLOCK_PLUGINS", "someother, webhook")
    registry = Registry(get_plugin_manager())
    assert "webhook" not in registry.channels
    assert "sendgrid" in registry.channels  # only the named plugin is blocked


# -- sending to a loopback endpoint ----------------------------------------------------------

Answer = Callable[[dict[str, Any], int], tuple[int, Any]]


class Endpoint:
    """An ``http.server`` on 127.0.0.1 that records requests and answers with ``answer``."""

    def __init__(self, answer: Answer) -> None:
        self.answer = answer
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length))
                with endpoint.lock:
                    endpoint.requests.append(
                        ({k.lower(): v for k, v in self.headers.items()}, body)
                    )
                    n = len(endpoint.requests)
                status, reply = endpoint.answer(body, n)
                payload = b"" if reply is None else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/campaign"

    def __enter__(self) -> Endpoint:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def results_for(
    body: dict[str, Any], refuse: Callable[[dict[str, Any]], dict[str, Any] | None]
) -> dict[str, Any]:
    out = []
    for m in body["messages"]:
        failure = refuse(m)
        out.append(
            failure | {"id": m["id"]}
            if failure
            else {"id": m["id"], "status": "sent", "message_id": f"hook-{m['recipient_id']}"}
        )
    return {"results": out}


RECIPIENTS = [
    {"id": f"C{i}", "email": f"user{i}@example.com", "first_name": name}
    for i, name in enumerate(["Ada", "Bo", "Cy", "Di", "Eve"], 1)
]


def pipeline(url: str, tmp_path: Path, **channel: Any) -> Pipeline:
    options = {"url": url, **channel.pop("options", {})}
    return Pipeline(
        "hooks_test",
        StaticSource.from_dicts(RECIPIENTS),
        [
            Channel(
                name="crm",
                provider="webhook",
                template=Template(subject="Spring sale", body="Hi {{ first_name }}"),
                options=options,
                require_consent=False,
                **channel,
            )
        ],
        base_dir=tmp_path,
        env={"CRM_API_TOKEN": TOKEN},
        sleep=lambda seconds: None,  # retry rounds do not wait in tests
    )


def read_results(report: Any, channel: str = "crm") -> dict[str, dict[str, Any]]:
    ledger = SqliteLedger(Path(report.output_dir).parent / ".campaignkit" / "ledger.db")
    try:
        return {r.recipient_id: r.to_dict() for r in ledger.deliveries(report.run_id, channel)}
    finally:
        ledger.close()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        blocked = {"code": "blocked", "status": "failed", "error": "address blocked"}
        return 200, results_for(body, lambda m: blocked if m["to"].startswith("user2@") else None)

    with Endpoint(answer) as ep:
        yield ep


def test_pipeline_sends_batches_and_records_results(endpoint: Endpoint, tmp_path: Path) -> None:
    report = pipeline(endpoint.url, tmp_path, batch_size=2, concurrency=1).run(
        run_id="r1", output_dir=tmp_path
    )
    result = report.channels["crm"]
    assert (result.sent, result.failed, result.skipped) == (4, 1, 0)
    assert result.error_codes == {"blocked": 1}
    assert report.status.value == "partial"

    assert sorted(len(body["messages"]) for _, body in endpoint.requests) == [1, 2, 2]
    headers, body = endpoint.requests[0]
    assert headers["authorization"] == f"Bearer {TOKEN}"
    assert headers["content-type"] == "application/json"
    assert body["channel"] == "crm"
    first = body["messages"][0]
    assert set(first) == {"id", "recipient_id", "to", "subject", "title", "body", "html", "data"}
    sent = {m["recipient_id"]: m for _, b in endpoint.requests for m in b["messages"]}
    assert sent["C1"]["body"] == "Hi Ada" and sent["C1"]["subject"] == "Spring sale"
    assert sent["C1"]["to"] == "user1@example.com"

    rows = read_results(report)
    assert rows["C1"]["status"] == "sent"
    assert rows["C1"]["provider_message_id"] == "hook-C1"
    assert rows["C2"]["status"] == "failed"
    assert rows["C2"]["error_code"] == "blocked"
    assert TOKEN not in json.dumps(rows)


def test_retry_result_is_resent_and_missing_result_fails(tmp_path: Path) -> None:
    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        if n == 1:
            # First request: C3 "try again later", C5 left out of the results.
            reply = results_for(
                body,
                lambda m: (
                    {"status": "failed", "code": "busy", "retry": True}
                    if m["recipient_id"] == "C3"
                    else None
                ),
            )
            reply["results"] = [
                r for r in reply["results"] if not r.get("message_id", "").endswith("C5")
            ]
            return 200, reply
        return 200, results_for(body, lambda m: None)

    with Endpoint(answer) as ep:
        report = pipeline(
            ep.url, tmp_path, concurrency=1, retry=RetryPolicy(retries=2, delay_minutes=5)
        ).run(output_dir=tmp_path)
    result = report.channels["crm"]
    assert (result.sent, result.failed, result.retries) == (4, 1, 1)
    rows = read_results(report)
    assert rows["C3"]["status"] == "sent" and rows["C3"]["attempts"] == 2
    assert rows["C5"]["status"] == "failed" and rows["C5"]["error_code"] == "no_result"
    # Only the transient failure was sent again.
    assert [m["recipient_id"] for m in ep.requests[1][1]["messages"]] == ["C3"]


def test_server_error_retries_the_whole_batch_with_on_doubt_retry(tmp_path: Path) -> None:
    # A 5xx is in doubt (the endpoint may have acted); an endpoint that drops
    # duplicates by id lets the channel opt into re-sending.
    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        if n == 1:
            return 503, {"code": "maintenance"}
        return 204, None

    with Endpoint(answer) as ep:
        report = pipeline(ep.url, tmp_path, concurrency=1, on_doubt="retry").run(
            output_dir=tmp_path
        )
    result = report.channels["crm"]
    assert (result.sent, result.failed, result.retries) == (5, 0, 1)
    assert len(ep.requests) == 2
    assert report.status.value == "succeeded"


def test_server_error_is_unknown_by_default(tmp_path: Path) -> None:
    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        return (503, {"code": "maintenance"}) if n == 1 else (204, None)

    with Endpoint(answer) as ep:
        report = pipeline(ep.url, tmp_path, concurrency=1).run(output_dir=tmp_path)
    result = report.channels["crm"]
    assert (result.sent, result.unknown, result.retries) == (0, 5, 0)
    assert result.reasons == {"in_doubt": 5}
    assert len(ep.requests) == 1
    assert report.status.value == "partial"


def test_address_field_option_and_permanent_error_code(tmp_path: Path) -> None:
    def answer(body: dict[str, Any], n: int) -> tuple[int, Any]:
        return 422, {"code": "bad_payload", "error": "nope"}

    with Endpoint(answer) as ep:
        report = pipeline(ep.url, tmp_path, options={"address_field": "first_name"}).run(
            output_dir=tmp_path
        )
    assert ep.requests[0][1]["messages"][0]["to"] == "Ada"
    result = report.channels["crm"]
    assert (result.sent, result.failed, result.retries) == (0, 5, 0)
    assert result.error_codes == {"bad_payload": 5}


@pytest.mark.parametrize(
    ("options", "path", "message"),
    [
        ({"url": "http://hooks.example.com/x"}, "channels.crm.options.url", "clear-text"),
        ({"url": "ftp://127.0.0.1/x"}, "channels.crm.options.url", "expected an http(s) URL"),
        (
            {"url": "https://hooks.example.com", "batch": 3},
            "channels.crm.options.batch",
            "unknown key",
        ),
        (
            {"url": "https://hooks.example.com", "headers": {"authorization": "x"}},
            "channels.crm.options.headers",
            "set by the channel itself",
        ),
    ],
)
def test_invalid_options_name_the_key(
    tmp_path: Path, options: dict[str, Any], path: str, message: str
) -> None:
    p = pipeline("unused", tmp_path, options=options)
    with pytest.raises(ConfigError) as info:
        p.validate()
    assert info.value.path == path
    assert message in str(info.value)
    assert TOKEN not in str(info.value)


# -- the plugin's sandbox fake ---------------------------------------------------------------

# The campaign's endpoint is not a real host: a send that escaped the sandbox fails.
UNREACHABLE = "https://hooks.example.invalid/campaign"

CAMPAIGN = f"""
[pipeline]
name = "hooks_rehearsal"

[source]
type = "csv"
path = "segment.csv"

[channels.crm]
provider = "webhook"
require_consent = false
batch_size = 2

[channels.crm.template]
subject = "Spring sale"
body = "Hi {{{{ first_name }}}}"

[channels.crm.options]
url = "{UNREACHABLE}"
"""


def write_campaign(directory: Path) -> Path:
    rows = "".join(f"{r['id']},{r['email']},{r['first_name']}\n" for r in RECIPIENTS)
    (directory / "segment.csv").write_text("id,email,first_name\n" + rows)
    config = directory / "campaign.toml"
    config.write_text(CAMPAIGN)
    return config


def test_the_fake_is_registered_through_the_hook() -> None:
    from campaignkit_webhook.sandbox import WebhookServer

    from campaignkit.testing.sandbox import sandbox_fakes

    info = Registry(get_plugin_manager()).sandbox_servers["webhook"]
    assert (info.plugin, info.package) == ("webhook", f"campaignkit-webhook {DIST_VERSION}")
    fake = sandbox_fakes()["webhook"]
    assert fake.server_class() is WebhookServer
    assert fake.token_variable == "WEBHOOK_API_TOKEN"  # the defaults of a plugin's fake
    assert "webhook" not in sandbox_fakes(get_plugin_manager(block=["webhook"]))


def test_a_blocked_plugin_has_no_fake() -> None:
    from campaignkit.testing.sandbox import Sandbox

    with pytest.raises(ValueError, match="no sandbox for provider 'webhook'") as info:
        Sandbox(["webhook"], plugins=get_plugin_manager(block=["webhook"]))
    assert "campaignkit_register_sandbox_servers" in str(info.value)


def test_ck_sandbox_rehearses_a_webhook_campaign(ck_sandbox: Any, tmp_path: Path) -> None:
    fake = ck_sandbox.servers["webhook"]
    fake.refused["user2@example.com"] = "blocked"
    fake.busy.add("user3@example.com")
    pipeline = ck_sandbox.pipeline(write_campaign(tmp_path), sleep=lambda seconds: None)
    assert pipeline.rehearsal
    assert set(ck_sandbox.live_servers()) == {"webhook"}  # only what the campaign uses

    result = pipeline.run().channels["crm"]
    assert (result.sent, result.failed, result.retries) == (4, 1, 1)
    assert result.error_codes == {"blocked": 1}
    sent = {m["recipient_id"]: m for m in fake.messages}
    assert sorted(sent) == ["C1", "C3", "C4", "C5"]
    assert sent["C1"]["body"] == "Hi Ada" and sent["C1"]["channel"] == "crm"
    assert fake.requests_per_second() > 0


def test_campaignkit_run_sandbox_sends_to_the_fake(tmp_path: Path) -> None:
    config = write_campaign(tmp_path)
    result = CliRunner().invoke(
        main, ["run", str(config), "--sandbox"], env={"CRM_API_TOKEN": None}
    )
    assert result.exit_code == 0, result.output
    assert "accepted messages per provider: webhook 5" in result.stdout
    [journal] = (tmp_path / "campaignkit-results" / "sandbox").glob("*/sandbox/webhook.jsonl")
    lines = [json.loads(line) for line in journal.read_text().splitlines()]
    assert sorted(m["to"] for m in lines) == sorted(r["email"] for r in RECIPIENTS)
    assert (tmp_path / ".campaignkit" / "ledger.sandbox.db").exists()
    assert not (tmp_path / ".campaignkit" / "ledger.db").exists()  # a rehearsal


def test_campaignkit_run_sandbox_honours_block_plugin(tmp_path: Path) -> None:
    config = write_campaign(tmp_path)
    result = CliRunner().invoke(
        main, ["run", str(config), "--sandbox", "--block-plugin", "webhook"]
    )
    assert result.exit_code == 2, result.output
    assert "--sandbox has no server for provider 'webhook'" in result.stderr


def test_campaignkit_sandbox_serves_the_fake(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignkit", "sandbox", "--provider", "webhook", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        described = json.loads(proc.stdout.readline())["providers"]["webhook"]
        assert described["env"] == {"WEBHOOK_API_TOKEN": "sandbox-token"}
        message = {"id": "k1", "recipient_id": "C1", "to": "ada@example.com", "body": "Hi"}
        reply = requests.post(
            described["options"]["url"],
            json={"channel": "crm", "messages": [message]},
            headers={"Authorization": "Bearer sandbox-token"},
            timeout=10,
        )
        assert reply.json()["results"][0]["status"] == "sent"
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "Accepted messages: webhook 1" in out + err


@pytest.fixture
def fake() -> Iterator[Any]:
    from campaignkit_webhook.sandbox import WebhookServer

    with WebhookServer(token=TOKEN) as server:
        yield server


def post(fake: Any, body: Any, *, token: str | None = TOKEN) -> requests.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return requests.post(fake.channel_options()["url"], json=body, headers=headers, timeout=10)


def message(i: int) -> dict[str, Any]:
    return {"id": f"k{i}", "recipient_id": f"C{i}", "to": f"user{i}@example.com", "body": "b"}


def test_the_fake_checks_the_wire_contract(fake: Any) -> None:
    assert post(fake, {"channel": "crm", "messages": [message(1)]}, token=None).status_code == 401
    assert post(fake, {"channel": "crm", "messages": [message(1)]}, token="x").status_code == 401
    bad = post(fake, {"channel": "crm", "messages": [{"id": 1}]})
    assert (bad.status_code, bad.json()["code"]) == (422, "bad_payload")
    big = post(fake, {"channel": "crm", "messages": [message(i) for i in range(501)]})
    assert (big.status_code, big.json()["code"]) == (413, "too_many_messages")
    assert fake.messages == []


def test_the_fake_drops_duplicates_by_id(fake: Any) -> None:
    first = post(fake, {"channel": "crm", "messages": [message(1)]}).json()["results"]
    again = post(fake, {"channel": "crm", "messages": [message(1)]}).json()["results"]
    assert first == again and first[0]["status"] == "sent"
    assert len(fake.messages) == 1


def test_the_fake_answers_faults_with_the_contract_s_error_body(fake: Any) -> None:
    fake.faults.fail_next(503, 429)
    assert post(fake, {"channel": "crm", "messages": [message(1)]}).json() == {
        "code": "server_error",
        "error": "internal error",
    }
    limited = post(fake, {"channel": "crm", "messages": [message(1)]})
    assert (limited.status_code, limited.json()["code"]) == (429, "rate_limited")
    assert "Retry-After" in limited.headers


def test_a_pipeline_pointed_at_the_fake_by_hand_is_a_rehearsal(
    ck_sandbox: Any, tmp_path: Path
) -> None:
    p = pipeline(ck_sandbox.channel_options("webhook")["url"], tmp_path)
    assert p.rehearsal
    assert pipeline(UNREACHABLE, tmp_path).rehearsal is False
