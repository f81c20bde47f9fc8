"""HTTP send: campaignkit against a hand-written ThreadPoolExecutor + requests script.

Usage::

    python benchmarks/bench_http.py [--messages N] [--threads T] [--rounds R]
                                    [--latency-only | --no-latency] [--quick] [--check]
                                    [--providers twilio,sendgrid] [--experiments E,E+F]

Starts Debian's nginx (with the echo module) on 127.0.0.1, on two free ports: one
answering at once, one after ``--latency`` seconds (``echo_sleep``, 50 ms by default).
Both answer the providers' success shapes (``benchmarks/nginx/*.conf.in``): Twilio
``POST /2010-04-01/Accounts/{sid}/Messages.json`` -> 201 with the message resource
(``sid`` ``SM...``, ``status`` ``queued``); SendGrid ``POST /v3/mail/send`` -> 202 with
``X-Message-Id``. nginx is stopped through its pid file at the end, also on Ctrl-C.
Before the rounds, a payload check sends the first messages of both paths through a
capturing transport adapter and requires byte-identical bodies and equal auth headers.

Configurations, each in a fresh process per round (``_harness``: interleaved, rotated,
medians, paired ratios):

* ``baseline``: ``ThreadPoolExecutor(T).map`` over the messages, one default
  ``requests.Session`` per thread (``threading.local``), posting the same bytes as
  campaignkit (same form fields or batch JSON, same auth, same ``Accept`` /
  ``Content-Type``), checking the status and reading the sid / ``X-Message-Id``.
  Payload dicts (forms; SendGrid batch dicts of 1,000 personalizations) are built and
  rendered with ``str.format`` before the clock starts; the client serializes them
  (``requests`` form-encodes; SendGrid bodies are ``json.dumps``-ed in the loop), as
  in the project's perf baselines. The goals are measured against this one.
* ``baseline_nt``: the same with ``Session.trust_env = False`` (no proxy / netrc
  lookups per request). campaignkit's ``HttpNotifier.connect`` resolves the
  environment once per session and then sets ``trust_env = False``, so this is the
  like-for-like HTTP client.
* ``baseline_render`` (SendGrid): the script renders (``str.format``) and builds each
  batch inside the clock, in its worker threads, from a prebuilt list of recipient
  dicts: what a script has to do end to end.
* ``campaignkit``: ``Pipeline.run`` with a ``StaticSource`` of N recipients (consent
  given), one channel (``twilio``: batch size 1; ``sendgrid``: batch size 1,000),
  ``concurrency=T``, ``rate=Rate(1e9, 1e9)`` (effectively unlimited, but the limiter
  runs), ``retries=0``, ``base_url`` at nginx, the default execution settings (the
  SQLite ledger on) with a fresh temporary ``base_dir``. **Timed: the send phase
  only**, from the ``on_extracted`` callback (the segment is extracted) to ``run()``
  returning: planning, Jinja rendering, batching, the worker threads, the ledger and
  the report. Extraction time is printed aside. Every run must report ``sent == N``.
* ``campaignkit_noledger``: the same with ``Execution(ledger=False)``.
* latency case only, ``cpu_ceiling``: ``baseline`` with the same T against the
  no-delay port, in the same rounds.

Latency case: the ceiling is ``min(T / latency * messages_per_request, cpu_ceiling)``,
computed per round; goals >= 0.8x that ceiling and >= 0.9x ``baseline``. No-latency
case: goal ``campaignkit`` >= 0.9x ``baseline``.

Columns: client CPU% (all threads, user+sys; 100 = one core), nginx CPU%, HTTP
requests and TCP connections nginx counted during the timed run (``stub_status``),
peak RSS (VmHWM), whole-machine CPU% (``box%``).

Experiments (``--experiments``; rows named ``campaignkit+<name>``) monkeypatch
campaignkit inside their worker process to measure a proposed src change; they are
never part of the verdicts. Profiling one configuration in-process, all threads::

    python benchmarks/bench_http.py --profile campaignkit_twilio --messages 5000
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import Config, Summary, Timer, emit, print_table, run_rounds, summarize

HERE = Path(__file__).resolve().parent
NGINX_DIR = HERE / "nginx"
INSTALL_HINT = "apt-get install nginx libnginx-mod-http-echo"
ECHO_MODULE_PATHS = (
    "/usr/lib/nginx/modules/ngx_http_echo_module.so",
    "/usr/share/nginx/modules/ngx_http_echo_module.so",
)

PROVIDERS = ("twilio", "sendgrid")
GOAL_BASELINE = 0.9
GOAL_CEILING = 0.8
SENDGRID_BATCH = 1000

# -- the workload: recipients, templates, credentials (not secrets: a local sink) ----------
ACCOUNT_SID = "AC" + "0123456789abcdef" * 2
TOKEN = "bench-token-0123456789"
FROM_NUMBER = "+15005550006"
FROM_EMAIL = "news@example-store.test"
FROM_NAME = "Example Store"
RUN_ID = "bench-http"
FIRST = ["Ana", "Ben", "Chloe", "Dmitri", "Emma", "Farid", "Grace", "Hiro"]
FIRST += ["Ines", "Jonas", "Kai", "Lena", "Mateo", "Nora", "Omar", "Priya"]
SEGMENTS = ["vip", "churn_risk", "new", "dormant", "loyal", "trial"]
FIELDS = frozenset({"id", "email", "phone", "push_token", "first_name", "segment", "promo_code"})

SMS_FORMAT = (
    "Hi {first_name}, our winter collection is out. As one of our {segment} customers "
    "you get early access: use code {promo_code} at checkout. Reply STOP to opt out."
)
EMAIL_SUBJECT = "Early access: the winter collection is here"
EMAIL_FORMAT = (  # the perf baselines' ~320-character body (perf-scripts/payloads.py)
    "Hi {first_name},\n\n"
    "As one of our {segment} customers you get early access to the winter "
    "collection, starting today. Your personal code is valid for 72 hours and "
    "can be combined with free shipping on every order over 50 EUR. Browse the "
    "new arrivals and check out in two clicks.\n\n"
    "Use code {promo_code} at checkout.\n\nThe Example Store team"
)


def _jinja(fmt: str) -> str:
    for name in ("first_name", "segment", "promo_code"):
        fmt = fmt.replace("{" + name + "}", "{{ " + name + " }}")
    return fmt


def recipient_fields(i: int) -> dict[str, str]:
    """The attributes of recipient ``i`` (the promo code makes every body unique)."""
    return {
        "first_name": FIRST[i % len(FIRST)],
        "segment": SEGMENTS[i % len(SEGMENTS)],
        "promo_code": f"WINTER-{i:06X}",
    }


def recipient_id(i: int) -> str:
    return f"C{i:09d}"


def email_address(i: int) -> str:
    return f"customer.{i}@example.com"


def phone_number(i: int) -> str:
    """A valid (diallable-range) US number: campaignkit skips invalid ones."""
    return f"+1415{2_000_000 + i:07d}"


def twilio_url(base: str) -> str:
    return f"{base}/2010-04-01/Accounts/{ACCOUNT_SID}/Messages.json"


def sendgrid_url(base: str) -> str:
    return f"{base}/v3/mail/send"


def idempotency_key(run_id: str, channel: str, seq: int) -> str:
    """What a script that wants de-duplication in webhooks would put in custom_args
    (the same derivation campaignkit documents: run, channel, position in the segment)."""
    text = f"ck2:{len(run_id)}:{run_id}:{len(channel)}:{channel}:{seq}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# -- baseline: the hand-written script ------------------------------------------------------
def records(n: int) -> list[dict[str, str]]:
    """The script's recipient list (what it would have read from the segment file)."""
    return [
        {
            "id": recipient_id(i),
            "seq": str(i),
            "email": email_address(i),
            "phone": phone_number(i),
            **recipient_fields(i),
        }
        for i in range(n)
    ]


def twilio_form(rec: Mapping[str, str]) -> dict[str, str]:
    return {"To": rec["phone"], "Body": SMS_FORMAT.format(**rec), "From": FROM_NUMBER}


def twilio_forms(n: int) -> list[dict[str, str]]:
    return [twilio_form(rec) for rec in records(n)]


def sendgrid_batch(recs: Sequence[Mapping[str, str]], run_id: str = RUN_ID) -> dict[str, Any]:
    """One Mail Send body; every text differs, so each personalization carries its text
    as a substitution (SendGrid's way of sending per-recipient bodies in one request
    without a stored template), as campaignkit does."""
    return {
        "personalizations": [
            {
                "to": [{"email": rec["email"]}],
                "subject": EMAIL_SUBJECT,
                "custom_args": {
                    "campaignkit_recipient_id": rec["id"],
                    "campaignkit_idempotency_key": idempotency_key(
                        run_id, "email", int(rec["seq"])
                    ),
                },
                "substitutions": {"%campaignkit_text%": EMAIL_FORMAT.format(**rec)},
            }
            for rec in recs
        ],
        "from": {"email": FROM_EMAIL, "name": FROM_NAME},
        "content": [{"type": "text/plain", "value": "%campaignkit_text%"}],
    }


def record_chunks(n: int) -> list[list[dict[str, str]]]:
    recs = records(n)
    return [recs[i : i + SENDGRID_BATCH] for i in range(0, n, SENDGRID_BATCH)]


def sendgrid_batches(n: int, run_id: str = RUN_ID) -> list[dict[str, Any]]:
    """Mail Send bodies of up to 1,000 personalizations each."""
    return [sendgrid_batch(chunk, run_id) for chunk in record_chunks(n)]


def _dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


SessionFactory = Callable[[], Any]


def _session_factory(trust_env: bool) -> SessionFactory:
    import requests

    def make() -> requests.Session:
        s = requests.Session()
        s.trust_env = trust_env
        return s

    return make


def baseline_twilio(
    base: str,
    forms: Sequence[Any],
    threads: int,
    make_session: SessionFactory,
    build: Callable[[Any], dict[str, str]] | None = None,
) -> int:
    """Post every form (``build(item)`` when given) from ``threads`` threads, one
    Session per thread; returns the number of 201s that carried a sid."""
    url = twilio_url(base)
    local = threading.local()
    sessions: list[Any] = []
    auth = (ACCOUNT_SID, TOKEN)
    headers = {"Accept": "application/json"}

    def send(form: Any) -> int:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = make_session()
            sessions.append(s)
        if build is not None:
            form = build(form)
        r = s.post(url, data=form, auth=auth, headers=headers, timeout=30)
        return 1 if r.status_code == 201 and r.json().get("sid") else 0

    try:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            return sum(ex.map(send, forms))
    finally:
        for s in sessions:
            s.close()


def baseline_sendgrid(
    base: str,
    batches: Sequence[Any],
    threads: int,
    make_session: SessionFactory,
    build: Callable[[Any], dict[str, Any]] | None = None,
) -> int:
    """Post every batch (``build(item)`` when given; serialized here) from ``threads``
    threads; returns the number of messages in requests answered 202 with an
    ``X-Message-Id``."""
    url = sendgrid_url(base)
    local = threading.local()
    sessions: list[Any] = []
    headers = {"Content-Type": "application/json"}

    def send(batch: Any) -> int:
        s = getattr(local, "s", None)
        if s is None:
            s = local.s = make_session()
            s.headers["Authorization"] = f"Bearer {TOKEN}"
            sessions.append(s)
        if build is not None:
            batch = build(batch)
        r = s.post(url, data=_dumps(batch), headers=headers, timeout=30)
        ok = r.status_code == 202 and r.headers.get("X-Message-Id")
        return len(batch["personalizations"]) if ok else 0

    try:
        with ThreadPoolExecutor(max_workers=threads) as ex:
            return sum(ex.map(send, batches))
    finally:
        for s in sessions:
            s.close()


# -- campaignkit -----------------------------------------------------------------------------
def _recipients(n: int) -> Iterator[Any]:
    from campaignkit import Recipient

    for i in range(n):
        yield Recipient(
            id=recipient_id(i),
            email=email_address(i),
            phone=phone_number(i),
            attributes=recipient_fields(i),
            consent={"sms": True, "email": True},
            line=i + 2,
        )


def campaignkit_pipeline(
    provider: str, base: str, n: int, threads: int, base_dir: str | Path, *, ledger: bool = True
) -> Any:
    """The benchmark's one-channel pipeline (``sms``/twilio or ``email``/sendgrid).

    ``base_dir`` (a fresh temporary directory) receives the ledger, report and rejects.
    ``ledger=False`` is ``execution.ledger = false`` (no durable per-recipient state).
    """
    from campaignkit import Channel, Execution, Pipeline, Rate, RetryPolicy, Template
    from campaignkit.testing import StaticSource

    if provider == "twilio":
        channel = Channel(
            name="sms",
            provider="twilio",
            template=Template(body=_jinja(SMS_FORMAT)),
            options={"from": FROM_NUMBER, "account_sid": ACCOUNT_SID, "base_url": base},
            concurrency=threads,
            rate=Rate(messages_per_second=1e9, requests_per_second=1e9),
            retry=RetryPolicy(retries=0),
        )
    else:
        channel = Channel(
            name="email",
            provider="sendgrid",
            template=Template(subject=EMAIL_SUBJECT, body=_jinja(EMAIL_FORMAT)),
            options={"from_email": FROM_EMAIL, "from_name": FROM_NAME, "base_url": base},
            concurrency=threads,
            batch_size=SENDGRID_BATCH,
            rate=Rate(messages_per_second=1e9, requests_per_second=1e9),
            retry=RetryPolicy(retries=0),
        )
    env = {"SMS_API_TOKEN": TOKEN, "EMAIL_API_TOKEN": TOKEN}
    execution = Execution() if ledger else Execution(ledger=False)
    return Pipeline(
        "bench_http",
        StaticSource(_recipients(n), fields=FIELDS),
        [channel],
        execution=execution,
        base_dir=base_dir,
        env=env,
    )


def campaignkit_run(pipeline: Any, timer: Timer) -> tuple[int, float]:
    """Run ``pipeline`` timing the send phase with ``timer``; returns (sent, extract_s).

    The clock starts in the ``on_extracted`` callback (the segment is extracted) and
    stops when ``run()`` returns.
    """
    t0 = time.perf_counter()
    extract_s: list[float] = []

    def on_extracted(count: int, rejected: Mapping[str, int]) -> None:
        extract_s.append(time.perf_counter() - t0)
        timer.__enter__()

    report = pipeline.run(run_id=RUN_ID, on_extracted=on_extracted)
    timer.__exit__()
    if not extract_s:
        raise SystemExit(f"campaignkit: nothing was extracted or sent ({report.status})")
    (result,) = report.channels.values()
    if result.failed or result.skipped:
        raise SystemExit(f"campaignkit: {result}")
    return result.sent, extract_s[0]


# -- EXPERIMENTS: monkeypatches measuring proposed src changes (labeled "+name") ------------
# A config named e.g. ``campaignkit+queue+nolimit`` applies these in its worker process
# only. They are measurements of what a change to src/ would buy, not campaignkit as
# shipped; the main tables never use them.
def _exp_verify() -> None:
    """HTTP: for a plain ``http://`` base URL keep ``Session.verify = True`` instead of
    the CA bundle path resolved from ``REQUESTS_CA_BUNDLE`` (set on this machine):
    with a path, requests stats it (``os.path.isdir``) and adds it to the pool key on
    every request. Only meaningful for http:// sinks; https needs the bundle."""
    from campaignkit import _http

    connect = _http.HttpNotifier.connect

    def patched(self: Any) -> Any:
        session = connect(self)
        if self.base_url.startswith("http://"):
            session.verify = True
        return session

    _http.HttpNotifier.connect = patched  # type: ignore[method-assign]


def _exp_queue() -> None:
    """Engine: a deeper batch queue (64 x concurrency instead of 2 x), so the producer
    and the workers hand the GIL back and forth less often."""
    import queue as queue_mod

    from campaignkit._engine import _runner as _engine

    class _Queue(queue_mod.Queue):  # type: ignore[type-arg]
        def __init__(self, maxsize: int = 0) -> None:
            super().__init__(maxsize * 32)

    class _Shim:
        Queue = _Queue

    _engine.queue = _Shim  # type: ignore[assignment,attr-defined]


def _exp_nolimit() -> None:
    """Rate: ``Rate()`` (no limiter at all) instead of ``Rate(1e9, 1e9)``."""
    from campaignkit._engine import _runner as _engine

    limiter = _engine.RateLimiter  # type: ignore[attr-defined]

    def make(messages: float | None, requests: float | None, **kw: Any) -> Any:
        return limiter(None, None, **kw)

    _engine.RateLimiter = make  # type: ignore[attr-defined,assignment]


EXPERIMENTS: dict[str, Callable[[], None]] = {
    "verify": _exp_verify,
    "queue": _exp_queue,
    "nolimit": _exp_nolimit,
}


def apply_experiments(names: Sequence[str]) -> None:
    """Apply the named experiments (``noledger`` is handled by the worker)."""
    for name in names:
        if name not in EXPERIMENTS:
            raise SystemExit(f"unknown experiment {name!r} (known: {', '.join(EXPERIMENTS)})")
        EXPERIMENTS[name]()


# -- the sink --------------------------------------------------------------------------------
def _stub_status(status_url: str | None) -> tuple[int, int]:
    """(accepted connections, requests) from nginx's stub_status; (0, 0) without it."""
    if not status_url:
        return 0, 0
    with urllib.request.urlopen(status_url, timeout=5) as r:
        lines = r.read().decode().splitlines()
    accepts, _handled, requests = (int(x) for x in lines[2].split())
    return accepts, requests


def _server_ticks(pid: int | None) -> int:
    """utime + stime of nginx's master and workers, in clock ticks."""
    if not pid:
        return 0
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class NginxSink:
    """nginx in a temporary prefix dir on 127.0.0.1: ``fast`` and ``slow`` ports.

    Use as a context manager; on exit it stops nginx through its pid file (SIGQUIT,
    then SIGTERM, then SIGKILL) and removes the prefix dir.

    Raises:
        FileNotFoundError: nginx or its echo module is not installed.
        RuntimeError: nginx did not start.
    """

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not os.access(self.nginx, os.X_OK):
            raise FileNotFoundError("nginx")
        module = next((p for p in ECHO_MODULE_PATHS if os.path.exists(p)), None)
        if module is None:
            raise FileNotFoundError("ngx_http_echo_module.so")
        self.module = module
        self.prefix: Path | None = None
        self.pid: int | None = None
        self.fast = self.slow = ""
        self.status_url = ""

    def __enter__(self) -> NginxSink:
        for attempt in range(5):
            self.prefix = Path(tempfile.mkdtemp(prefix="ck-bench-nginx-"))
            self.prefix.chmod(0o755)  # workers run as nobody when the master is root
            ports = [_free_port(), _free_port()]
            if ports[0] == ports[1]:
                continue
            self._write_config(*ports)
            conf = self.prefix / "nginx.conf"
            proc = subprocess.run(
                [
                    self.nginx,
                    "-p",
                    str(self.prefix),
                    "-c",
                    str(conf),
                    "-e",
                    str(self.prefix / "error.log"),
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0 and self._wait_started():
                self.fast = f"http://127.0.0.1:{ports[0]}"
                self.slow = f"http://127.0.0.1:{ports[1]}"
                self.status_url = f"{self.fast}/nginx_status"
                return self
            log = proc.stderr + self._error_log()
            self._stop()
            if "Address already in use" not in log or attempt == 4:
                raise RuntimeError(f"nginx did not start:\n{log[-2000:]}")
        raise RuntimeError("nginx did not start: no free ports")

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _write_config(self, fast: int, slow: int) -> None:
        assert self.prefix is not None
        server = (NGINX_DIR / "server.conf.in").read_text()
        servers = []
        for port, delay in ((fast, ""), (slow, f"echo_sleep {self.latency:g};")):
            servers.append(
                server.replace("@PORT@", str(port))
                .replace("@DELAY@", delay)
                .replace("@ACCOUNT_SID@", ACCOUNT_SID)
            )
        conf = (
            (NGINX_DIR / "sink.conf.in")
            .read_text()
            .replace("@ECHO_MODULE@", self.module)
            .replace("@SERVERS@", "\n".join(servers))
        )
        (self.prefix / "nginx.conf").write_text(conf)

    def _error_log(self) -> str:
        try:
            return (self.prefix / "error.log").read_text() if self.prefix else ""
        except OSError:
            return ""

    def _wait_started(self) -> bool:
        assert self.prefix is not None
        pid_file = self.prefix / "nginx.pid"
        for _ in range(100):
            if pid_file.exists() and pid_file.read_text().strip():
                self.pid = int(pid_file.read_text())
                return True
            time.sleep(0.05)
        return False

    def _stop(self) -> None:
        if self.prefix is None:
            return
        pid_file = self.prefix / "nginx.pid"
        pid = self.pid
        if pid is None and pid_file.exists() and pid_file.read_text().strip():
            pid = int(pid_file.read_text())
        if pid is not None:
            for sig, wait in ((signal.SIGQUIT, 3.0), (signal.SIGTERM, 2.0), (signal.SIGKILL, 1.0)):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    break
                deadline = time.monotonic() + wait
                while time.monotonic() < deadline and _alive(pid):
                    time.sleep(0.05)
                if not _alive(pid):
                    break
        shutil.rmtree(self.prefix, ignore_errors=True)
        self.prefix = None
        self.pid = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (not our child, so not reaped by us) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# -- worker ----------------------------------------------------------------------------------
def worker(a: argparse.Namespace) -> None:
    """Run one configuration in this (fresh) process and print its result line."""
    kind, provider = a.worker.rsplit("_", 1)
    kind, *experiments = kind.split("+")
    if "noledger" in experiments:  # pseudo-experiment: combine others with ledger = false
        experiments.remove("noledger")
        kind = "campaignkit_noledger"
    apply_experiments(experiments)
    n, threads, base = a.messages, a.threads, a.url
    import requests  # noqa: F401 - keep import time out of the figure

    timer = Timer()
    extract_s = None
    origin = None
    if kind.startswith("campaignkit"):
        # under nginx's prefix dir when given: removed with it even if this worker is killed
        with tempfile.TemporaryDirectory(prefix="ck-bench-http-", dir=a.tmp_root) as tmp:
            pipeline = campaignkit_pipeline(
                provider, base, n, threads, tmp, ledger=kind != "campaignkit_noledger"
            )
            acc0, req0 = _stub_status(a.status_url)
            tk0 = _server_ticks(a.nginx_pid)
            sent, extract_s = campaignkit_run(pipeline, timer)
        import campaignkit

        origin = str(Path(campaignkit.__file__).parent)
    else:
        make = _session_factory(trust_env=kind != "baseline_nt")
        render = kind == "baseline_render"
        if provider == "twilio":
            items: list[Any] = records(n) if render else twilio_forms(n)
            acc0, req0 = _stub_status(a.status_url)
            tk0 = _server_ticks(a.nginx_pid)
            with timer:
                sent = baseline_twilio(base, items, threads, make, twilio_form if render else None)
        else:
            items = record_chunks(n) if render else sendgrid_batches(n)
            acc0, req0 = _stub_status(a.status_url)
            tk0 = _server_ticks(a.nginx_pid)
            with timer:
                sent = baseline_sendgrid(
                    base, items, threads, make, sendgrid_batch if render else None
                )
    tk1 = _server_ticks(a.nginx_pid)
    acc1, req1 = _stub_status(a.status_url)
    if sent != n:
        raise SystemExit(f"{a.worker}: {sent} of {n} messages accepted")
    clk = os.sysconf("SC_CLK_TCK")
    emit(
        timer.result(
            config=a.worker,
            n=n,
            sent=sent,
            msgs_per_s=n / timer.secs,
            cpu_us_per_msg=timer.cpu / n * 1e6,
            extract_s=extract_s,
            campaignkit_from=origin,
            srv_cpu_pct=(tk1 - tk0) / clk / timer.secs * 100 if a.nginx_pid else None,
            # stub_status requests include the second status request itself
            http_requests=req1 - req0 - 1 if a.status_url else None,
            conns=acc1 - acc0 - 1 if a.status_url else None,
        )
    )


# -- runner ----------------------------------------------------------------------------------
COLUMNS = (
    ("cpu_us_per_msg", "cli CPU us/msg", "{:.1f}"),
    ("cpu_pct", "cli CPU%", "{:.0f}"),
    ("srv_cpu_pct", "nginx CPU%", "{:.0f}"),
    ("http_requests", "requests", "{:,.0f}"),
    ("conns", "conns", "{:.0f}"),
    ("peak_mb", "peak MB", "{:.1f}"),
    ("box_pct", "box%", "{:.0f}"),
)


def _config(
    name: str,
    worker_name: str,
    url: str,
    n: int,
    threads: int,
    sink: NginxSink,
    env: Mapping[str, str] | None = None,
) -> Config:
    argv = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        worker_name,
        "--url",
        url,
        "--messages",
        str(n),
        "--threads",
        str(threads),
        "--nginx-pid",
        str(sink.pid),
        "--status-url",
        sink.status_url,
        "--tmp-root",
        str(sink.prefix),
    ]
    return Config(name, argv, env=dict(env or {}), timeout=900)


def _paired(a: Sequence[Mapping[str, Any]], b: Sequence[float]) -> list[float]:
    return [float(x["msgs_per_s"]) / y for x, y in zip(a, b, strict=True)]


def _median_of(results: Sequence[Mapping[str, Any]], key: str) -> float:
    return statistics.median(float(r[key]) for r in results)


def _fmt_ratio(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.2f} (min-max {min(values):.2f}-{max(values):.2f})"


#: The row of ``--against``: campaignkit imported from another source directory.
AGAINST = "campaignkit@before"

BASELINE_NOTES = {
    "baseline_nt": "trust_env=False, like campaignkit's sessions",
    "baseline_render": "renders and builds payloads inside the clock",
}


def run_case(
    provider: str,
    sink: NginxSink,
    names: Sequence[str],
    *,
    latency: bool,
    n: int,
    threads: int,
    rounds: int,
    against: str | None = None,
) -> dict[str, float]:
    """One table: ``names`` (``baseline`` first) for a provider, with or without latency;
    with ``against`` (a campaignkit source directory), also ``campaignkit@before``: the
    same campaignkit run importing that source.

    Returns:
        verdict ratios: ``vs_baseline`` and, with latency, ``vs_ceiling``.
    """
    url = sink.slow if latency else sink.fast
    configs = [_config(c, f"{c}_{provider}", url, n, threads, sink) for c in names]
    if against:
        env = {"PYTHONPATH": against}
        configs.append(_config(AGAINST, f"campaignkit_{provider}", url, n, threads, sink, env))
    if latency:
        configs.append(_config("cpu_ceiling", f"baseline_{provider}", sink.fast, n, threads, sink))
    where = f"sink +{sink.latency * 1000:g} ms" if latency else "sink, no added latency"
    batch = 1 if provider == "twilio" else SENDGRID_BATCH
    print(
        f"== http send, {provider} (batch {batch}), {where}: {n:,} messages, "
        f"T={threads} threads, {rounds} rounds"
    )
    results = run_rounds(configs, rounds)
    rows = summarize(results, "msgs_per_s", baseline="baseline")
    print_table(rows, "msg/s", baseline="baseline", columns=COLUMNS)
    ck = results["campaignkit"]
    ext = statistics.median(float(r["extract_s"]) for r in ck)
    print(
        f"(campaignkit from {ck[0]['campaignkit_from']}; extraction, not timed: median "
        f"{ext:.3f} s for {n:,} recipients)"
    )
    verdicts: dict[str, float] = {}
    by_name: dict[str, Summary] = {s.name: s for s in rows}
    vs_base = by_name["campaignkit"].ratio
    verdicts["vs_baseline"] = vs_base
    print(
        f"campaignkit / baseline: {vs_base:.2f} (paired, min-max "
        f"{by_name['campaignkit'].ratio_low:.2f}-{by_name['campaignkit'].ratio_high:.2f}; "
        f"goal >= {GOAL_BASELINE}): {'OK' if vs_base >= GOAL_BASELINE else 'BELOW GOAL'}"
    )
    ck_rates = [float(r["msgs_per_s"]) for r in ck]
    for name in names:
        if name.startswith("baseline_"):
            other = [float(r["msgs_per_s"]) for r in results[name]]
            print(
                f"campaignkit / {name} ({BASELINE_NOTES.get(name, '')}): "
                + _fmt_ratio(_paired(ck, other))
            )
        elif name == "campaignkit_noledger":
            print(
                "campaignkit_noledger (execution.ledger = false) / campaignkit: "
                + _fmt_ratio(_paired(results[name], ck_rates))
            )
        elif name.startswith("campaignkit+"):
            print(
                f"EXPERIMENT {name} / campaignkit: " + _fmt_ratio(_paired(results[name], ck_rates))
            )
    if against:
        before = results[AGAINST]
        if before[0]["campaignkit_from"] == ck[0]["campaignkit_from"]:
            raise SystemExit(f"--against {against}: campaignkit was imported from the same place")
        print(
            f"campaignkit / {AGAINST} (from {before[0]['campaignkit_from']}): "
            + _fmt_ratio(_paired(ck, [float(r["msgs_per_s"]) for r in before]))
            + f"; CPU per message, median: {_median_of(ck, 'cpu_us_per_msg'):.1f} us vs "
            f"{_median_of(before, 'cpu_us_per_msg'):.1f} us"
        )
    if latency:
        per_request = [float(r["n"]) / max(1.0, float(r["http_requests"])) for r in ck]
        lat_ceiling = [threads / sink.latency * m for m in per_request]
        cpu = [float(r["msgs_per_s"]) for r in results["cpu_ceiling"]]
        ceiling = [min(x, y) for x, y in zip(lat_ceiling, cpu, strict=True)]
        ck_c = _paired(ck, ceiling)
        verdicts["vs_ceiling"] = statistics.median(ck_c)
        print(
            f"ceiling = min(T / {sink.latency:g} s x {statistics.median(per_request):g} "
            f"msg/request = {statistics.median(lat_ceiling):,.0f} msg/s; cpu_ceiling = baseline "
            f"without latency, median {statistics.median(cpu):,.0f} msg/s): median "
            f"{statistics.median(ceiling):,.0f} msg/s (per round: "
            + ", ".join(f"{c:,.0f}" for c in ceiling)
            + ")"
        )
        print(f"baseline / ceiling: {_fmt_ratio(_paired(results['baseline'], ceiling))}")
        ok = verdicts["vs_ceiling"] >= GOAL_CEILING
        print(
            f"campaignkit / ceiling: {_fmt_ratio(ck_c)}; goal >= {GOAL_CEILING}: "
            f"{'OK' if ok else 'BELOW GOAL'}"
        )
        for name in names:
            if name.startswith("campaignkit+"):
                print(
                    f"EXPERIMENT {name} / ceiling: " + _fmt_ratio(_paired(results[name], ceiling))
                )
    print()
    return verdicts


def check_payloads() -> str:
    """Compare the bytes the baseline and campaignkit put on the wire (first messages),
    through a capturing transport adapter (no network). Raises if they differ."""
    import requests
    import requests.adapters

    class Capture(requests.adapters.BaseAdapter):
        def __init__(self, status: int, content: bytes, headers: Mapping[str, str]) -> None:
            super().__init__()
            self.sent: list[requests.PreparedRequest] = []
            self.status, self.content, self.headers = status, content, headers

        def send(  # type: ignore[override]
            self, request: requests.PreparedRequest, **kwargs: Any
        ) -> requests.Response:
            self.sent.append(request)
            r = requests.Response()
            r.status_code, r._content, r.request, r.url = (
                self.status,
                self.content,
                request,
                request.url or "",
            )
            r.headers.update(self.headers)
            return r

        def close(self) -> None:
            pass

    base = "http://127.0.0.1:9"
    out = []
    for provider, k in (("twilio", 3), ("sendgrid", SENDGRID_BATCH)):
        if provider == "twilio":
            reply = Capture(201, b'{"sid":"SMx","status":"queued"}', {})
        else:
            reply = Capture(202, b"", {"X-Message-Id": "x"})
        pipeline = campaignkit_pipeline(provider, base, k, 1, tempfile.gettempdir())
        name = pipeline.channels[0].name
        messages = pipeline.preview(name, n=k)
        plan = pipeline.channel_plan(pipeline.channels[0], pipeline.source.fields())
        conn = plan.notifier.connect()
        conn.mount("http://", reply)
        for i in range(0, len(messages), plan.batch_size):
            plan.notifier.send_batch(conn, messages[i : i + plan.batch_size])
        conn.close()
        ck_sent = list(reply.sent)
        reply.sent.clear()

        def make(reply: Capture = reply) -> requests.Session:
            s = requests.Session()
            s.mount("http://", reply)
            return s

        if provider == "twilio":
            baseline_twilio(base, twilio_forms(k), 1, make)
        else:
            baseline_sendgrid(base, sendgrid_batches(k, run_id="preview"), 1, make)
        if len(ck_sent) != len(reply.sent):
            raise SystemExit(f"{provider}: {len(ck_sent)} vs {len(reply.sent)} requests")
        sizes = []
        for x, y in zip(ck_sent, reply.sent, strict=True):
            body_x = x.body.encode() if isinstance(x.body, str) else x.body or b""
            body_y = y.body.encode() if isinstance(y.body, str) else y.body or b""
            if (x.url, body_x) != (y.url, body_y):
                raise SystemExit(
                    f"{provider}: payloads differ:\n{body_x[:300]!r}\n{body_y[:300]!r}"
                )
            for h in ("Authorization", "Content-Type", "Accept"):
                if x.headers.get(h) != y.headers.get(h):
                    raise SystemExit(f"{provider}: header {h} differs")
            sizes.append(len(body_x or b""))
        out.append(
            f"{provider}: {len(sizes)} request(s) of {k} message(s) byte-identical "
            f"({min(sizes):,}-{max(sizes):,} B body)"
        )
    return "; ".join(out)


def decompose(a: argparse.Namespace) -> int:
    """Per-message CPU of one campaignkit configuration, by thread and step
    (:mod:`_decompose`), in this process against the no-delay sink."""
    from _decompose import Decomposition

    kind, provider = a.decompose.rsplit("_", 1)
    kind, *experiments = kind.split("+")
    if not kind.startswith("campaignkit"):
        raise SystemExit("--decompose: a campaignkit configuration, e.g. campaignkit_sendgrid")
    apply_experiments(experiments)
    steps = Decomposition()
    steps.install()
    main_cpu: list[float] = []
    with NginxSink(a.latency) as sink, tempfile.TemporaryDirectory() as tmp:
        pipeline = campaignkit_pipeline(
            provider, sink.fast, a.messages, a.threads, tmp, ledger=kind != "campaignkit_noledger"
        )
        timer = Timer()

        def on_extracted(count: int, rejected: Mapping[str, int]) -> None:
            main_cpu.append(time.thread_time())
            steps.start()
            timer.__enter__()

        report = pipeline.run(run_id=RUN_ID, on_extracted=on_extracted)
        timer.__exit__()
        steps.main_thread(time.thread_time() - main_cpu[0])
    (result,) = report.channels.values()
    print(f"{a.decompose}: {result.sent:,} sent, {a.messages / timer.secs:,.0f} msg/s (wrapped)")
    steps.report(a.messages, timer.cpu)
    return 0


def profile(a: argparse.Namespace) -> int:
    """cProfile one campaignkit or baseline configuration in this process."""
    import cProfile
    import pstats

    kind, provider = a.profile.rsplit("_", 1)
    kind, *experiments = kind.split("+")
    apply_experiments(experiments)
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()
    thread_run = threading.Thread.run

    def profiled_run(self: threading.Thread) -> None:  # cProfile sees one thread only
        p = cProfile.Profile()
        with lock:
            profiles.append(p)
        p.enable()
        try:
            thread_run(self)
        finally:
            p.disable()

    threading.Thread.run = profiled_run  # type: ignore[method-assign]
    with NginxSink(a.latency) as sink, tempfile.TemporaryDirectory() as tmp:
        base = sink.fast
        prof = cProfile.Profile()
        profiles.append(prof)
        timer = Timer()
        if kind.startswith("campaignkit"):
            pipeline = campaignkit_pipeline(
                provider, base, a.messages, a.threads, tmp, ledger=kind != "campaignkit_noledger"
            )
            prof.enable()
            sent, _ = campaignkit_run(pipeline, timer)
            prof.disable()
        else:
            make = _session_factory(trust_env=kind != "baseline_nt")
            payloads: Any = (
                twilio_forms(a.messages) if provider == "twilio" else sendgrid_batches(a.messages)
            )
            fn = baseline_twilio if provider == "twilio" else baseline_sendgrid
            prof.enable()
            with timer:
                sent = fn(base, payloads, a.threads, make)
            prof.disable()
    print(
        f"{a.profile}: {sent:,} sent in {timer.secs:.2f} s = {sent / timer.secs:,.0f} msg/s "
        f"(under cProfile), CPU {timer.cpu:.2f} s"
    )
    threading.Thread.run = thread_run  # type: ignore[method-assign]
    stats = pstats.Stats(prof)
    for p in profiles[1:]:
        stats.add(p)
    stats.sort_stats("tottime").print_stats(a.profile_lines)
    stats.sort_stats("cumulative").print_stats(a.profile_lines)
    if a.profile_callers:
        stats.print_callers(a.profile_callers)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="HTTP send benchmark (nginx sink on 127.0.0.1)")
    ap.add_argument("--messages", type=int, default=20_000, help="messages per run (no latency)")
    ap.add_argument("--threads", type=int, default=8, help="threads (no latency)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--latency", type=float, default=0.05, help="sink delay per request, s")
    ap.add_argument(
        "--latency-messages",
        type=int,
        default=4_000,
        help="twilio messages per run with latency (sendgrid: --messages)",
    )
    ap.add_argument("--latency-threads", type=int, default=16)
    ap.add_argument("--latency-only", action="store_true", help="only the latency case")
    ap.add_argument("--no-latency", action="store_true", help="skip the latency case")
    ap.add_argument("--providers", default=",".join(PROVIDERS))
    ap.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2,000 messages (800 with latency), 2 rounds",
    )
    ap.add_argument("--check", action="store_true", help="exit 1 when a goal is missed")
    ap.add_argument(
        "--experiments",
        default="",
        metavar="E[,E+F...]",
        help="also run campaignkit with these labeled monkeypatch experiments "
        f"({', '.join(EXPERIMENTS)}; noledger: ledger off); combine with +",
    )
    ap.add_argument(
        "--against",
        metavar="SRC",
        help="also run campaignkit imported from SRC (e.g. the src/ of an older commit's "
        f"export) as the row {AGAINST}, in the same rounds",
    )
    ap.add_argument(
        "--profile", metavar="CONFIG", help="cProfile one config, e.g. campaignkit_twilio"
    )
    ap.add_argument(
        "--decompose",
        metavar="CONFIG",
        help="CPU per message by thread and step of one campaignkit config "
        "(e.g. campaignkit_sendgrid), in-process",
    )
    ap.add_argument("--profile-lines", type=int, default=40, help=argparse.SUPPRESS)
    ap.add_argument("--profile-callers", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--nginx-pid", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--status-url", help=argparse.SUPPRESS)
    ap.add_argument("--tmp-root", help=argparse.SUPPRESS)
    ap.add_argument("--payload-check", metavar="EXPERIMENTS", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        worker(a)
        return 0
    if a.payload_check is not None:  # in a fresh process: the experiments patch classes
        apply_experiments([e for e in a.payload_check.split("+") if e and e != "noledger"])
        print(check_payloads())
        return 0
    if a.quick:
        a.messages, a.latency_messages, a.rounds = 2_000, 800, 2
    providers = [p for p in a.providers.split(",") if p]
    if any(p not in PROVIDERS for p in providers):
        ap.error(f"--providers: choose from {', '.join(PROVIDERS)}")

    def on_signal(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds through NginxSink.__exit__

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        if a.profile:
            return profile(a)
        if a.decompose:
            return decompose(a)
        try:
            sink = NginxSink(a.latency)
        except FileNotFoundError as exc:
            print(f"bench_http: {exc} not found; install it with: {INSTALL_HINT}", file=sys.stderr)
            return 2
        print(f"payload check: {check_payloads()}")
        for exp in (e for e in a.experiments.split(",") if e):
            out = subprocess.run(
                [sys.executable, str(Path(__file__).resolve()), "--payload-check", exp],
                capture_output=True,
                text=True,
            )
            if out.returncode:
                raise SystemExit(f"payload check with +{exp} failed:\n{out.stderr[-2000:]}")
            print(f"payload check with EXPERIMENT +{exp}: {out.stdout.strip()}")
        failed = False
        with sink:
            print(
                f"nginx {sink.fast} (no delay) and {sink.slow} (+{a.latency:g} s), pid {sink.pid}"
            )
            print()
            extra = [f"campaignkit+{e}" for e in a.experiments.split(",") if e]
            for provider in providers:
                if not a.latency_only:
                    names = ["baseline", "baseline_nt", "campaignkit", "campaignkit_noledger"]
                    if provider == "sendgrid":
                        names.insert(2, "baseline_render")
                    v = run_case(
                        provider,
                        sink,
                        [*names, *extra],
                        latency=False,
                        n=a.messages,
                        threads=a.threads,
                        rounds=a.rounds,
                        against=a.against,
                    )
                    failed |= v["vs_baseline"] < GOAL_BASELINE
            if not a.no_latency:
                for provider in providers:
                    names = ["baseline", "campaignkit"]
                    if provider == "sendgrid":
                        names.insert(1, "baseline_render")
                    v = run_case(
                        provider,
                        sink,
                        [*names, *extra],
                        latency=True,
                        n=a.latency_messages if provider == "twilio" else a.messages,
                        threads=a.latency_threads,
                        rounds=a.rounds,
                        against=a.against,
                    )
                    failed |= v["vs_baseline"] < GOAL_BASELINE or v["vs_ceiling"] < GOAL_CEILING
        return 1 if a.check and failed else 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


if __name__ == "__main__":
    sys.exit(main())
