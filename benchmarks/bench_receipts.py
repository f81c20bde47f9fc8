"""Receipts under load: ``campaignkit receipts serve`` against a bare WSGI app.

Usage::

    python benchmarks/bench_receipts.py [--events N] [--concurrency C] [--rounds R]
                                        [--batch B] [--backends sqlite,postgres]
                                        [--providers sendgrid,twilio]

Before the rounds, one campaign (an e-mail channel on SendGrid, an SMS channel on
Twilio, N recipients) is sent through the loopback sandbox, not as a rehearsal, into
a SQLite ledger (and, with ``--backends postgres``, into a database
``ck_bench_<random>`` on ``CAMPAIGNKIT_BENCH_POSTGRES_URL``, created here and dropped
at the end): N ``sent`` deliveries per channel.

Configurations, each in a fresh process per round (``_harness``: interleaved,
rotated, medians, paired ratios). A worker starts the server in a process of its own
on a free port of 127.0.0.1, builds and signs every request before the clock starts,
then posts them from C client threads (one keep-alive ``requests.Session`` each) and
times until the last answer. Every answer must be 200.

* ``receipts_<provider>_<backend>``: ``campaignkit receipts serve CONFIG --threads 8``
  (waitress, the command's own settings and logging), verifying signatures, on a
  fresh copy of the SQLite ledger (PostgreSQL: the receipts of the previous round
  deleted first). After the round the ledger must hold exactly the N receipts posted,
  each matched, and every delivery of the channel must show ``delivered``.
* ``hello_<provider>``: a hello-world WSGI app (reads the body, answers ``200 ok``)
  in waitress with the same settings (threads, body limit, ident, proxy headers),
  sent the same requests.

Providers: ``sendgrid`` posts batches of B events (default 100) as SendGrid's Event
Webhook does (JSON array, ECDSA P-256 signature over timestamp + body); ``twilio``
posts one status callback per request (form body, HMAC-SHA1 over the public URL and
the sorted parameters, the URL carrying the delivery's reference as the send gave
it). Every event carries its delivery's reference, as the providers echo it back.
Figures: events/s, requests/s, and the paired ratio receipts / hello-world of the same
provider; the server's CPU per event (``/proc``) and the client's. The server is
stopped with SIGTERM, as a service manager stops it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Config, Timer, emit, print_table, run_rounds, summarize

PROVIDERS = ("sendgrid", "twilio")
CHANNEL = {"sendgrid": "email", "twilio": "sms"}
PUBLIC_URL = "https://hooks.example.test/ck"
SMS_TOKEN = "bench-receipts-token-0123456789"  # not a secret: a loopback bench
SERVER_THREADS = 8
POSTGRES_URL = os.environ.get(
    "CAMPAIGNKIT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)

CAMPAIGN_TOML = """\
[pipeline]
name = "receipts_bench"

[source]
type = "csv"
path = "{segment}"

[execution]
ledger = "{ledger}"

[receipts]
public_url = "{public_url}"

[channels.email]
provider = "sendgrid"
require_consent = false

[channels.email.options]
from_email = "news@example.com"

[channels.email.template]
subject = "Hi"
body = "Text"

[channels.sms]
provider = "twilio"
require_consent = false

[channels.sms.template]
body = "Hi {{{{ first_name }}}}"
"""


# -- the campaign, sent once -------------------------------------------------------------------
def write_campaign(folder: Path, ledger: str, segment: Path) -> Path:
    """A campaign file in ``folder`` recording into ``ledger``."""
    path = folder / "campaign.toml"
    text = CAMPAIGN_TOML.format(segment=segment, ledger=ledger, public_url=PUBLIC_URL)
    path.write_text(text, encoding="utf-8")
    return path


def send_campaign(config_path: Path) -> None:
    """Send the campaign through the sandbox into its configured ledger (not a
    rehearsal: a rehearsal always records into its own SQLite file)."""
    import attrs

    from campaignkit import Pipeline, Rate, load_config
    from campaignkit.testing.sandbox import Sandbox

    config = load_config(config_path)
    with Sandbox(["sendgrid", "twilio"]) as box:
        channels = tuple(
            attrs.evolve(c, options={**c.options, **box.channel_options(c.provider)}, rate=Rate())
            for c in config.channels
        )
        config = attrs.evolve(config, channels=channels)
        Pipeline.from_config(config, rehearsal=False, env=box.env(config)).run()


def prepare(folder: Path, events: int, backends: Sequence[str]) -> dict[str, str]:
    """Segment, keys, the sent campaign per backend; returns backend -> ledger."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    segment = folder / "seg.csv"
    with segment.open("w", encoding="utf-8") as f:
        f.write("id,email,phone,first_name\n")
        for i in range(events):
            f.write(f"c{i},u{i}@example.com,+1415{5_000_000 + i:07d},N{i}\n")
    key = ec.generate_private_key(ec.SECP256R1())
    (folder / "sendgrid.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (folder / "sendgrid.pub").write_text(base64.b64encode(der).decode(), encoding="utf-8")
    ledgers = {}
    for backend in backends:
        where = folder / f"prep_{backend}"
        where.mkdir()
        ledger = str(where / "ledger.db") if backend == "sqlite" else backend_url(folder)
        t0 = time.perf_counter()
        send_campaign(write_campaign(where, ledger, segment))
        print(
            f"  {backend}: campaign of {events:,} recipients x 2 channels sent in "
            f"{time.perf_counter() - t0:.1f} s",
            file=sys.stderr,
        )
        ledgers[backend] = ledger
    return ledgers


def backend_url(folder: Path) -> str:
    """The bench's own PostgreSQL database (name kept in ``folder``)."""
    name = (folder / "pg_database").read_text(encoding="utf-8").strip()
    parts = urllib.parse.urlsplit(POSTGRES_URL)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.contextmanager
def postgres_database(folder: Path) -> Iterator[bool]:
    """Create ``ck_bench_<random>`` for the block (False: no server answers)."""
    try:
        import psycopg

        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except Exception as exc:  # no driver, no server
        print(f"  PostgreSQL left out: {type(exc).__name__}", file=sys.stderr)
        yield False
        return
    name = f"ck_bench_{secrets.token_hex(6)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    (folder / "pg_database").write_text(name, encoding="utf-8")
    try:
        yield True
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def sent_deliveries(backend: str, ledger: str, channel: str) -> list[tuple[str, str, str]]:
    """(address, provider message id, reference) of the channel's sent deliveries."""
    sql = (
        "SELECT d.address, d.provider_message_id, d.seq, r.run_id FROM deliveries d "
        "JOIN channels c ON c.run = d.run AND c.code = d.channel JOIN runs r ON r.id = d.run "
        "WHERE c.channel = ? AND d.state = 'sent' ORDER BY d.seq"
    )
    rows = query(backend, ledger, sql, (channel,))
    return [(str(a), str(m), f"{seq}.{run}") for a, m, seq, run in rows]


def copy_sqlite(source: str, target: str) -> None:
    """A consistent copy of a SQLite ledger, its WAL included (the backup API)."""
    src, dst = sqlite3.connect(source), sqlite3.connect(target)
    try:
        src.backup(dst)
    finally:
        src.close()
        dst.close()


def query(backend: str, ledger: str, sql: str, args: Sequence[Any] = ()) -> list[Any]:
    """Rows of ``sql`` on the ledger (``?`` placeholders; PostgreSQL: autocommit)."""
    if backend == "sqlite":
        conn = sqlite3.connect(ledger)
        try:
            with conn:
                return conn.execute(sql, tuple(args)).fetchall()
        finally:
            conn.close()
    import psycopg

    with psycopg.connect(ledger, autocommit=True) as conn:
        conn.execute("SET search_path TO campaignkit")
        cursor = conn.execute(sql.replace("?", "%s"), tuple(args))  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


# -- requests, signed as the providers sign them -----------------------------------------------
Request = tuple[str, bytes, dict[str, str]]  # path, body, headers


def sendgrid_requests(
    folder: Path, targets: list[tuple[str, str, str]], batch: int
) -> list[Request]:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key((folder / "sendgrid.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    stamp = str(int(time.time()))
    out = []
    for start in range(0, len(targets), batch):
        events = [
            {
                "email": address,
                "timestamp": 1_700_000_000 + start + i,
                "event": "delivered",
                "sg_event_id": f"bench-{start + i}",
                "sg_message_id": f"{message_id}.filterdrecv-1-2-3",
                "campaignkit_ref": ref,
            }
            for i, (address, message_id, ref) in enumerate(targets[start : start + batch])
        ]
        body = json.dumps(events).encode()
        signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        headers = {
            "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
            "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
            "Content-Type": "application/json",
        }
        out.append(("/receipts/email", body, headers))
    return out


def twilio_requests(targets: list[tuple[str, str, str]]) -> list[Request]:
    out = []
    for address, sid, ref in targets:
        query_ = urllib.parse.urlencode({"ck": ref})
        url = f"{PUBLIC_URL}/receipts/sms?{query_}"
        params = {
            "MessageSid": sid,
            "MessageStatus": "delivered",
            "To": address,
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
        }
        signed = url + "".join(k + params[k] for k in sorted(params))
        digest = hmac.new(SMS_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()
        headers = {
            "X-Twilio-Signature": base64.b64encode(digest).decode(),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        out.append((f"/receipts/sms?{query_}", urllib.parse.urlencode(params).encode(), headers))
    return out


# -- servers -----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.02)
    raise RuntimeError("server did not listen in time")


def serve_hello(port: int) -> None:
    """waitress with ``receipts serve``'s settings, serving a hello-world app."""
    from waitress import create_server

    from campaignkit._config import ReceiptsConfig

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        environ["wsgi.input"].read(length)
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "3")])
        return [b"ok\n"]

    server = create_server(
        app,
        host="127.0.0.1",
        port=port,
        threads=SERVER_THREADS,
        max_request_body_size=ReceiptsConfig().max_body_bytes,
        ident="campaignkit",
        clear_untrusted_proxy_headers=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: server.close())
    server.run()


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_all(port: int, requests_: list[Request], concurrency: int) -> tuple[int, list[int]]:
    """Post every request from ``concurrency`` threads; returns (requests, bad statuses)."""
    import requests

    lock = threading.Lock()
    it = iter(requests_)
    bad: list[int] = []
    base = f"http://127.0.0.1:{port}"

    def client() -> None:
        with requests.Session() as session:
            session.trust_env = False
            while True:
                with lock:
                    item = next(it, None)
                if item is None:
                    return
                path, body, headers = item
                status = session.post(
                    base + path, data=body, headers=headers, timeout=60
                ).status_code
                if status != 200:
                    with lock:
                        bad.append(status)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(requests_), bad


def server_argv(app: str, config: Path, port: int) -> list[str]:
    if app == "hello":
        return [sys.executable, __file__, "--serve-hello", str(port)]
    args = ["receipts", "serve", str(config), "--port", str(port)]
    args += ["--threads", str(SERVER_THREADS)]
    return [sys.executable, "-m", "campaignkit", *args]


# -- a worker: one configuration, one round ----------------------------------------------------
def parse_name(name: str) -> tuple[str, str, str]:
    """``hello_<provider>`` or ``receipts_<provider>_<backend>``."""
    app, provider, *rest = name.split("_")
    return app, provider, rest[0] if rest else "sqlite"


def worker(args: argparse.Namespace) -> None:
    app, provider, backend = parse_name(args.worker)
    folder = Path(args.folder)
    prep_ledger = json.loads((folder / "ledgers.json").read_text())[backend]
    channel = CHANNEL[provider]
    targets = sent_deliveries(backend, prep_ledger, channel)
    with tempfile.TemporaryDirectory(prefix="ck-bench-rx-") as tmp:
        work = Path(tmp)
        ledger = prep_ledger
        if app == "receipts" and backend == "sqlite":
            ledger = str(work / "ledger.db")
            copy_sqlite(prep_ledger, ledger)
        elif app == "receipts":
            query(backend, ledger, "DELETE FROM receipts")
            query(
                backend,
                ledger,
                "UPDATE deliveries SET receipt = NULL, receipt_at = NULL, receipt_key = NULL",
            )
        config = write_campaign(work, ledger, folder / "seg.csv")
        port = free_port()
        env = {
            **os.environ,
            "EMAIL_RECEIPTS_KEY": (folder / "sendgrid.pub").read_text(encoding="utf-8"),
            "SMS_API_TOKEN": SMS_TOKEN,
        }
        argv = server_argv(app, config, port)
        log = (work / "server.log").open("wb")
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_listening(port, proc)
            if provider == "sendgrid":
                reqs = sendgrid_requests(folder, targets, args.batch)
            else:
                reqs = twilio_requests(targets)
            cpu0 = proc_cpu(proc.pid)
            with Timer() as t:
                n_requests, bad = post_all(port, reqs, args.concurrency)
            server_cpu = proc_cpu(proc.pid) - cpu0
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()
        if bad:
            tail = (work / "server.log").read_text(errors="replace")[-2000:]
            raise SystemExit(f"{len(bad)} answers not 200 (first: {bad[0]}):\n{tail}")
        if app == "receipts":
            check_ledger(backend, ledger, channel, provider, len(targets))
    n = len(targets)
    emit(
        t.result(
            events=n,
            requests=n_requests,
            events_per_s=n / t.secs,
            requests_per_s=n_requests / t.secs,
            cli_us_per_event=t.cpu / n * 1e6,
            srv_us_per_event=server_cpu / n * 1e6,
            srv_cpu_pct=server_cpu / t.secs * 100,
        )
    )


def check_ledger(backend: str, ledger: str, channel: str, provider: str, n: int) -> None:
    """No loss, no extra: n receipts of this provider, all matched, every delivery
    of the channel ``delivered``."""
    stored = query(
        backend,
        ledger,
        "SELECT COUNT(*), SUM(CASE WHEN matched = 1 THEN 1 ELSE 0 END), COUNT(DISTINCT key) "
        "FROM receipts WHERE provider = ?",
        (provider,),
    )[0]
    receipts = query(
        backend,
        ledger,
        "SELECT d.receipt, COUNT(*) FROM deliveries d "
        "JOIN channels c ON c.run = d.run AND c.code = d.channel WHERE c.channel = ? "
        "GROUP BY d.receipt",
        (channel,),
    )
    if tuple(int(x or 0) for x in stored) != (n, n, n) or dict(receipts) != {"delivered": n}:
        raise SystemExit(f"ledger check failed: receipts {stored}, deliveries {receipts}")


# -- the runner --------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=5000, help="events per provider")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=100, help="SendGrid events per POST")
    parser.add_argument("--backends", default="sqlite", help="sqlite,postgres")
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--serve-hello", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.serve_hello is not None:
        serve_hello(args.serve_hello)
        return 0
    if args.worker:
        worker(args)
        return 0
    backends = [b for b in args.backends.split(",") if b]
    providers = [p for p in args.providers.split(",") if p]
    with contextlib.ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ck-bench-rx-")))
        if "postgres" in backends and not stack.enter_context(postgres_database(folder)):
            backends.remove("postgres")
        print(
            f"receipts: {args.events:,} events per provider, C={args.concurrency}, "
            f"SendGrid batches of {args.batch}, server threads {SERVER_THREADS}",
            file=sys.stderr,
        )
        ledgers = prepare(folder, args.events, backends)
        (folder / "ledgers.json").write_text(json.dumps(ledgers))
        configs = []
        common = ["--folder", str(folder), "--concurrency", str(args.concurrency)]
        common += ["--batch", str(args.batch)]
        for provider in providers:
            names = [f"hello_{provider}"] + [f"receipts_{provider}_{b}" for b in backends]
            for name in names:
                argv_ = [sys.executable, __file__, "--worker", name, *common]
                configs.append(Config(name, argv_, timeout=900))
        results = run_rounds(configs, args.rounds)
    columns = (
        ("requests_per_s", "req/s", "{:,.0f}"),
        ("srv_us_per_event", "srv CPU us/ev", "{:.0f}"),
        ("cli_us_per_event", "cli CPU us/ev", "{:.0f}"),
        ("srv_cpu_pct", "srv CPU%", "{:.0f}"),
        ("box_pct", "box%", "{:.0f}"),
    )
    for provider in providers:
        subset = {k: v for k, v in results.items() if f"_{provider}" in k}
        base = f"hello_{provider}"
        print(f"\n{provider}: events/s (median of {args.rounds} rounds), paired ratio to {base}")
        rows = summarize(subset, "events_per_s", baseline=base)
        print_table(rows, "events/s", baseline=base, columns=columns)
    return 0


if __name__ == "__main__":
    sys.exit(main())
