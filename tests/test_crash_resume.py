"""Crash test of the durable ledger: SIGKILL a campaign at random moments, resume, and
check what the provider sandboxes received.

The sandbox servers run in this process and outlive the campaign, which runs in a
subprocess (``crash_worker.py``) killed with SIGKILL at seeded random moments: during
start-up, extraction and planning (polled from the ledger), and after a random number
of messages accepted by the sandboxes (so kills follow progress, not wall-clock time,
on a slow machine). After each kill the ledger is inspected (read only): no more than
concurrency x batch size deliveries of a channel may be ``in_flight``. Then the run is
resumed until it finishes, and the sandboxes must show:

* push (OneSignal, idempotency keys): every owed recipient notified exactly once —
  deliveries in flight at a crash are re-sent with the same key and de-duplicated;
* SMS (Twilio) and e-mail (SendGrid), no idempotency: no recipient messaged twice;
  every owed recipient messaged once, except the ``unknown`` ones (0 or 1 times); the
  ``unknown`` deliveries are exactly those that were in flight at some crash, and the
  final report counts them;
* nothing sent to anyone not owed a message; the provider message ids in the ledger are
  the sandboxes' ids.

Finally ``resume(run_id, resend_unknown=True)`` re-sends the unknown deliveries (the
declared policy: the user accepts possible duplicates for them), after which every owed
recipient has the message and the duplicates are at most the unknowns.

Reproduce a failure with ``CRASH_SEED=<seed printed in the failure>``.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from campaignkit._ledger import SqliteLedger
from campaignkit.testing.sandbox import Faults, Sandbox

WORKER = Path(__file__).with_name("crash_worker.py")
LOGICAL_DATE = "2026-04-01T00:00:00+00:00"
PIPELINE = "crash_test"
CHANNELS = {"email": "sendgrid", "sms": "twilio", "push": "onesignal"}
TOKEN_ENV = {"email": "EMAIL_API_TOKEN", "sms": "SMS_API_TOKEN", "push": "PUSH_API_TOKEN"}
CONCURRENCY = 4
BATCH = {"email": 50, "sms": 1, "push": 40}
IDEMPOTENT = {"push"}
#: Seconds any one worker process may take before the test gives up on it.
PROCESS_TIMEOUT = 60.0
#: Kills aimed at extraction and planning land this long after the run is claimed.
PHASE_WINDOW = 0.3


# -- the segment ---------------------------------------------------------------------------
@attrs.frozen
class Segment:
    """The generated customers and what each channel owes them (channel -> ids)."""

    rows: list[dict[str, str]]
    owed: dict[str, set[str]]  # must get the message
    refused: dict[str, set[str]]  # the provider refuses the address (permanent failure)
    malformed: dict[str, set[str]]  # an address no provider accepts (skipped or failed)
    by_address: dict[str, dict[str, str]]  # address -> recipient id
    unregistered: set[str] = attrs.field(factory=set)  # OneSignal: not subscribed
    unsubscribed: set[str] = attrs.field(factory=set)  # Twilio: sent STOP (21610)

    @property
    def expected_messages(self) -> int:
        return sum(len(ids) for ids in self.owed.values())


def make_segment(n: int, rng: random.Random) -> Segment:
    """``n`` customers: most reachable on every channel; some without an address or
    consent (skipped), with a malformed address (skipped, or failed by the provider),
    or with an address the provider refuses (failed)."""
    rows: list[dict[str, str]] = []
    owed: dict[str, set[str]] = {ch: set() for ch in CHANNELS}
    refused: dict[str, set[str]] = {ch: set() for ch in CHANNELS}
    malformed: dict[str, set[str]] = {ch: set() for ch in CHANNELS}
    by_address: dict[str, dict[str, str]] = {ch: {} for ch in CHANNELS}
    segment = Segment(rows, owed, refused, malformed, by_address)
    for i in range(n):
        rid = f"c{i:05d}"
        email = "" if rng.random() < 0.04 else f"user{i}@example.com"
        bad = dict.fromkeys(CHANNELS, "")
        phone = "" if rng.random() < 0.04 else f"+1415{2000000 + i:07d}"
        if phone and rng.random() < 0.02:
            phone, bad["sms"] = f"+1555010{i % 10000:04d}", "malformed"  # no such number
        elif phone and rng.random() < 0.02:
            segment.unsubscribed.add(phone)
            bad["sms"] = "refused"
        token = "" if rng.random() < 0.04 else str(uuid.UUID(int=rng.getrandbits(128), version=4))
        if token and rng.random() < 0.02:
            token, bad["push"] = f"device-{i}", "malformed"  # not a subscription id
        elif token and rng.random() < 0.02:
            segment.unregistered.add(token)
            bad["push"] = "refused"
        consent = {ch: rng.random() >= 0.05 for ch in CHANNELS}
        rows.append(
            {
                "customer_id": rid,
                "email": email,
                "phone": phone,
                "push_token": token,
                "first_name": f"N{i}",
                "segment": rng.choice(["premium", "regular", "new"]),
                "opted_in_email": "yes" if consent["email"] else "no",
                "opted_in_sms": "yes" if consent["sms"] else "no",
                "opted_in_push": "yes" if consent["push"] else "no",
            }
        )
        addresses = {"email": email, "sms": phone, "push": token}
        for ch, address in addresses.items():
            if address:
                by_address[ch][address] = rid
            if address and consent[ch]:
                {"": owed, "refused": refused, "malformed": malformed}[bad[ch]][ch].add(rid)
    return segment


def write_campaign(directory: Path, segment: Segment, sandbox: Sandbox, retries: int = 2) -> Path:
    """The segment CSV and a campaign TOML pointing every channel at the sandbox."""
    header = list(segment.rows[0])
    lines = [",".join(header)] + [",".join(r[h] for h in header) for r in segment.rows]
    (directory / "segment.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    options = {ch: sandbox.channel_options(p) for ch, p in CHANNELS.items()}
    templates = {
        "email": {"subject": "Spring deals, {{ first_name }}", "body": "Hi {{ first_name }}!"},
        "sms": {"body": "Hi {{ first_name }}, 20% off with SPRING20"},
        # Push content depends on the segment only, so a batch becomes a few requests
        # whose idempotency keys depend on which recipients the batch holds.
        "push": {
            "title": "Spring sale",
            "body": "{% if segment == 'premium' %}Early access{% else %}20% off{% endif %}",
        },
    }
    text = f"""
[pipeline]
name = "{PIPELINE}"

[source]
type = "csv"
path = "segment.csv"

[source.columns]
id = "customer_id"

[source.consent]
email = "opted_in_email"
sms = "opted_in_sms"
push = "opted_in_push"

[execution]
state_path = "state/ledger.db"
output_dir = "results"

[execution.retry]
retries = {retries}
delay_minutes = 0
"""
    for ch, provider in CHANNELS.items():
        text += f"""
[channels.{ch}]
provider = "{provider}"
concurrency = {CONCURRENCY}
batch_size = {BATCH[ch]}
timeout_seconds = 20
rate = {{}}

[channels.{ch}.template]
{_toml_table(templates[ch])}
[channels.{ch}.options]
{_toml_table(options[ch])}
"""
    path = directory / "campaign.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _toml_table(values: dict[str, Any]) -> str:
    # JSON strings and numbers are valid TOML values.
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


# -- the ledger, read between kills ---------------------------------------------------------
@attrs.frozen
class LedgerView:
    """What the ledger holds after a kill (read while no worker runs)."""

    phase: str
    run_id: str | None = None
    status: str | None = None
    in_flight: dict[str, set[str]] = attrs.field(factory=dict)  # channel -> recipient ids
    states: dict[str, collections.Counter[str]] = attrs.field(factory=dict)


def inspect_ledger(
    db: Path, pid: int | None = None, channels: Iterable[str] = CHANNELS
) -> LedgerView:
    """Read the ledger between kills, with plain ``SELECT`` statements (nothing is
    written). ``pid`` is the killed worker's: phase ``start-up`` if it had not claimed
    the run yet."""
    if not db.exists():
        return LedgerView("before ledger")
    with contextlib.closing(sqlite3.connect(db, timeout=10.0)) as conn:
        try:
            runs = conn.execute(
                "SELECT id, run_id, status, pid, recipients FROM runs WHERE pipeline = ?",
                (PIPELINE,),
            ).fetchall()
        except sqlite3.OperationalError:  # killed before the schema was created
            return LedgerView("before ledger")
        if not runs:
            return LedgerView("before run")
        ((key, run_id, status, run_pid, recipients),) = runs  # one logical date, no --force
        planned = {
            ch
            for (ch,) in conn.execute(
                "SELECT channel FROM channels WHERE run = ? AND planned = 1", (key,)
            )
        }
        in_flight: dict[str, set[str]] = {ch: set() for ch in channels}
        states: dict[str, collections.Counter[str]] = {ch: collections.Counter() for ch in channels}
        for ch, state, rid in conn.execute(
            "SELECT c.channel, d.state, r.recipient_id FROM deliveries d "
            "JOIN channels c ON c.run = d.run AND c.code = d.channel "
            "JOIN recipients r ON r.run = d.run AND r.seq = d.seq WHERE d.run = ?",
            (key,),
        ):
            states[ch][state] += 1
            if state == "in_flight":
                in_flight[ch].add(rid)
    if status != "running":
        phase = f"finished ({status})"
    elif pid is not None and run_pid != pid:
        phase = "start-up (run not claimed yet)"
    elif recipients is None:
        phase = "extracting"
    elif not planned >= set(states):
        phase = f"planning (planned: {', '.join(sorted(planned)) or 'none'})"
    else:
        phase = "sending"
    return LedgerView(phase, run_id, status, in_flight, states)


def claimed(db: Path, pid: int) -> bool:
    """Whether process ``pid`` has begun or claimed the run (polled while the worker
    runs, read only): from here on it extracts, plans, resolves and sends."""
    if not db.exists():
        return False
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=1.0)) as conn:
            row = conn.execute("SELECT COUNT(*) FROM runs WHERE pid = ?", (pid,)).fetchone()
            return bool(row[0])
    except sqlite3.Error:  # not created or migrated yet
        return False


# -- the campaign process --------------------------------------------------------------------
@attrs.define
class Harness:
    tmp: Path
    sandbox: Sandbox
    segment: Segment
    config: Path
    env: dict[str, str]
    attempts: int = 0
    procs: list[subprocess.Popen[str]] = attrs.field(factory=list)

    def close(self) -> None:
        """Kill any worker still running (a failed test must not leave one behind)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)

    @property
    def db(self) -> Path:
        return self.tmp / "state" / "ledger.db"

    def received(self) -> int:
        return sum(len(s.messages) for s in self.sandbox.servers.values())

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        self.attempts += 1
        out = (self.tmp / f"attempt-{self.attempts}.out").open("w")
        err = (self.tmp / f"attempt-{self.attempts}.err").open("w")
        with out, err:
            proc = subprocess.Popen(
                [sys.executable, str(WORKER), str(self.config), LOGICAL_DATE, *args],
                stdout=out,
                stderr=err,
                text=True,
                env=self.env,
                cwd=self.tmp,
            )
        self.procs.append(proc)
        return proc

    def output(self) -> tuple[str, str]:
        n = self.attempts
        return (
            (self.tmp / f"attempt-{n}.out").read_text(),
            (self.tmp / f"attempt-{n}.err").read_text(),
        )

    def complete(self, *args: str) -> dict[str, Any]:
        """Run the worker to its end; returns its JSON summary."""
        proc = self.spawn(*args)
        try:
            rc = proc.wait(timeout=PROCESS_TIMEOUT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        out, err = self.output()
        assert rc == 0, f"worker {args} exited with {rc}:\n{err[-3000:]}"
        summary: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return summary

    def quiesce(self) -> None:
        """Wait until the sandboxes have processed every request they received: a
        killed worker's last requests are still answered (and recorded) after their
        latency."""
        servers = self.sandbox.servers.values()
        settle = 0.1 + max(s.faults.latency for s in servers)
        deadline = time.monotonic() + 10
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            count = self.received()
            arrived = max((s.request_times[-1] for s in servers if s.request_times), default=0)
            now = time.monotonic()
            if count != last:
                last, stable_since = count, now
            elif now - stable_since > settle and now - arrived > settle:
                return
            time.sleep(0.01)


@attrs.frozen
class Kill:
    kind: str
    detail: str
    phase: str
    received: int
    in_flight: dict[str, int]

    def __str__(self) -> str:
        flying = ", ".join(f"{ch}={n}" for ch, n in self.in_flight.items() if n) or "none"
        return (
            f"{self.kind:<8} {self.detail:<22} -> {self.phase}; received={self.received}; "
            f"in flight: {flying}"
        )


@attrs.define
class CrashLog:
    seed: int
    kills: list[Kill] = attrs.field(factory=list)
    in_flight_at_crash: dict[str, set[str]] = attrs.field(
        factory=lambda: {ch: set() for ch in CHANNELS}
    )
    finished_early: bool = False

    def __str__(self) -> str:
        lines = [
            f"seed={self.seed} (CRASH_SEED={self.seed} reproduces the data and the kill schedule)"
        ]
        lines += [f"  kill {i + 1}: {k}" for i, k in enumerate(self.kills)]
        if self.finished_early:
            lines.append("  the run finished before the last planned kill")
        return "\n".join(lines)


def crash_repeatedly(h: Harness, kills: int, rng: random.Random, log: CrashLog) -> None:
    """Start the campaign, SIGKILL it at a random moment, ``kills`` times (each start
    after the first resumes the logical date's run)."""
    startup = 1.0  # seconds from spawn to the first request, measured below
    phase_kills = 0
    for k in range(kills):
        before = h.received()
        view = inspect_ledger(h.db)
        proc = h.spawn("run")
        t0 = time.monotonic()
        if not view.phase.startswith(("sending", "start-up")) and phase_kills < 3:
            # Not extracted and planned yet: aim at extraction and planning (together
            # about 0.2 s for 3,000 recipients here).
            phase_kills += 1
            kind, delay = "phase", rng.uniform(0.0, PHASE_WINDOW)
            _wait(lambda p=proc: claimed(h.db, p.pid), proc, t0)
            _sleep_unless_exited(proc, delay)
            detail = f"claimed +{delay * 1000:.0f}ms"
        elif rng.random() < 0.25:
            # Start-up and the resume's own bookkeeping, before or as sending restarts.
            kind, delay = "delay", rng.uniform(startup * 0.5, startup * 1.2)
            _sleep_unless_exited(proc, delay)
            detail = f"spawn +{delay * 1000:.0f}ms"
        else:
            remaining = max(1, h.segment.expected_messages - before)
            step = rng.randint(1, max(1, 2 * remaining // (kills - k + 1)))
            kind, detail = "progress", f"+{step} messages"
            _wait(lambda b=before, n=step: h.received() - b >= n, proc, t0)
        exited = proc.poll() is not None
        if not exited:
            proc.kill()  # SIGKILL
        rc = proc.wait(timeout=PROCESS_TIMEOUT)
        if exited:
            _, err = h.output()
            assert rc == 0, f"{log}\nworker failed with {rc}:\n{err[-3000:]}"
        h.quiesce()
        first = _first_request(h, t0)
        if first is not None:
            startup = max(0.1, first - t0)
        view = inspect_ledger(h.db, proc.pid)
        log.kills.append(
            Kill(
                kind,
                detail if not exited else detail + " (exited)",
                view.phase,
                h.received(),
                {ch: len(ids) for ch, ids in view.in_flight.items()},
            )
        )
        for ch, ids in view.in_flight.items():
            bound = CONCURRENCY * BATCH[ch]
            assert len(ids) <= bound, f"{log}\n{ch}: {len(ids)} in flight > {bound}"
            log.in_flight_at_crash[ch] |= ids
        if exited:
            log.finished_early = True
            return


def _first_request(h: Harness, t0: float) -> float | None:
    """When the sandboxes got this attempt's first request (monotonic), if any."""
    times = [t for s in h.sandbox.servers.values() for t in s.request_times if t >= t0]
    return min(times) if times else None


def _wait(done: Any, proc: subprocess.Popen[str], t0: float) -> None:
    while not done() and proc.poll() is None:
        if time.monotonic() - t0 > PROCESS_TIMEOUT:
            pytest.fail(f"worker made no progress within {PROCESS_TIMEOUT}s")
        time.sleep(0.002)


def _sleep_unless_exited(proc: subprocess.Popen[str], seconds: float) -> None:
    end = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < end:
        time.sleep(min(0.005, max(0.0, end - time.monotonic())))


# -- checks at the sandboxes ------------------------------------------------------------------
def received_by_recipient(h: Harness) -> dict[str, collections.Counter[str]]:
    """Channel -> recipient id -> messages the sandbox accepted for them."""
    out: dict[str, collections.Counter[str]] = {}
    for ch, provider in CHANNELS.items():
        addresses = h.segment.by_address[ch]
        counter: collections.Counter[str] = collections.Counter()
        for m in h.sandbox.servers[provider].messages:
            assert m["to"] in addresses, f"{ch}: message to unknown address {m['to']!r}"
            counter[addresses[m["to"]]] += 1
        out[ch] = counter
    return out


def provider_ids(h: Harness) -> dict[str, dict[str, set[str]]]:
    """Channel -> recipient id -> the sandbox's message ids for them."""
    out: dict[str, dict[str, set[str]]] = {}
    for ch, provider in CHANNELS.items():
        ids: dict[str, set[str]] = collections.defaultdict(set)
        for m in h.sandbox.servers[provider].messages:
            ids[h.segment.by_address[ch][m["to"]]].add(m["id"])
        out[ch] = ids
    return out


def check_after_crashes(h: Harness, log: CrashLog, summary: dict[str, Any]) -> dict[str, Any]:
    """The exactly-once / no-gap / bounded-unknown checks; returns observed numbers."""
    got = received_by_recipient(h)
    ids = provider_ids(h)
    ledger = SqliteLedger(h.db)
    try:
        results = {(d.channel, d.recipient_id): d for d in ledger.deliveries(summary["run_id"])}
    finally:
        ledger.close()
    observed: dict[str, Any] = {}
    for ch in CHANNELS:
        owed, refused = h.segment.owed[ch], h.segment.refused[ch]
        states = {rid: d.status.value for (c, rid), d in results.items() if c == ch}
        unknown = {rid for rid, s in states.items() if s == "unknown"}
        # Nobody who is not owed got anything; nobody got anything twice.
        assert set(got[ch]) <= owed, f"{log}\n{ch}: messages to recipients not owed"
        dupes = {rid: n for rid, n in got[ch].items() if n > 1}
        assert not dupes, f"{log}\n{ch}: duplicates {sorted(dupes.items())[:10]}"
        if ch in IDEMPOTENT:
            # Exactly once, in flight at a crash or not.
            assert not unknown, f"{log}\n{ch}: unknown deliveries on an idempotent provider"
            missing = owed - set(got[ch])
            assert not missing, f"{log}\n{ch}: owed but never notified: {sorted(missing)[:10]}"
        else:
            # Unknown = exactly the deliveries in flight at some crash, plus those whose
            # request ended in doubt (a 5xx here, which this sandbox never processes).
            doubted = {rid for rid in unknown if results[(ch, rid)].reason == "in_doubt"}
            crashed = unknown - doubted
            assert crashed == log.in_flight_at_crash[ch], (
                f"{log}\n{ch}: unknown {len(crashed)} vs in flight at crashes "
                f"{len(log.in_flight_at_crash[ch])}"
            )
            assert len(crashed) <= len(log.kills) * CONCURRENCY * BATCH[ch]
            assert not any(got[ch][rid] for rid in doubted), f"{log}\n{ch}: in doubt, delivered"
            missing = owed - set(got[ch]) - unknown
            assert not missing, (
                f"{log}\n{ch}: owed, not unknown, never sent: {sorted(missing)[:10]}"
            )
        # The ledger agrees with the sandbox.
        for rid in owed:
            state = states[rid]
            assert state in ("sent", "unknown"), f"{log}\n{ch}/{rid}: {state}"
            if state == "sent":
                pmid = results[(ch, rid)].provider_message_id
                assert got[ch][rid] == 1 and ids[ch][rid] == {pmid}, f"{log}\n{ch}/{rid}"
        for rid in refused:  # refused by the provider, unless in flight at a crash
            assert states[rid] in ("failed", "unknown"), f"{log}\n{ch}/{rid}: {states[rid]}"
        for rid in h.segment.malformed[ch]:  # refused by the core or the provider
            assert states[rid] in ("skipped", "failed", "unknown"), f"{ch}/{rid}: {states[rid]}"
        others = set(states) - owed - refused - h.segment.malformed[ch]
        assert all(states[rid] == "skipped" for rid in others)
        # The report counts the unknowns.
        totals = summary["channels"][ch]
        assert totals["unknown"] == len(unknown), f"{log}\n{ch}: report {totals}"
        assert totals["pending"] == 0, f"{log}\n{ch}: report {totals}"
        assert totals["sent"] == len(owed - unknown), f"{log}\n{ch}: report {totals}"
        for state in ("failed", "skipped"):
            n = sum(1 for s in states.values() if s == state)
            assert totals[state] == n, f"{log}\n{ch}: report {totals}"
        observed[ch] = {
            "unknown": len(unknown),
            "unknown_delivered": sum(1 for rid in unknown if got[ch][rid]),
        }
    onesignal = h.sandbox.servers["onesignal"]
    assert onesignal.key_reuses == 0, f"{log}\nan idempotency key was reused for another body"
    observed["push"]["replays"] = onesignal.replays
    return observed


def check_resend_unknown(
    h: Harness, log: CrashLog, summary: dict[str, Any], before: dict[str, Any]
) -> dict[str, int]:
    """After ``resume --resend-unknown``: everyone owed has the message, except those
    whose resend ended in doubt again (a 5xx: ``unknown``, never processed by this
    sandbox); duplicates only among the former unknowns (the declared policy), fewer
    where reconciling (Twilio) found the first copy. Returns duplicates per channel."""
    got = received_by_recipient(h)
    ledger = SqliteLedger(h.db)
    try:
        results = {(d.channel, d.recipient_id): d for d in ledger.deliveries(summary["run_id"])}
    finally:
        ledger.close()
    dupes: dict[str, int] = {}
    for ch in CHANNELS:
        owed = h.segment.owed[ch]
        doubted = {
            rid
            for rid in owed
            if results[(ch, rid)].status.value == "unknown"
            and results[(ch, rid)].reason == "in_doubt"
        }
        # Delivered only by the attempt that a crash left unknown (the 5xx: not processed).
        assert all(not got[ch][rid] or rid in log.in_flight_at_crash[ch] for rid in doubted), (
            f"{log}\n{ch}: in doubt, delivered"
        )
        missing = owed - set(got[ch]) - doubted
        assert not missing, f"{log}\n{ch}: still missing after resend: {sorted(missing)[:10]}"
        twice = {rid for rid, n in got[ch].items() if n > 1}
        assert all(got[ch][rid] == 2 for rid in twice)
        assert twice <= log.in_flight_at_crash[ch], f"{log}\n{ch}: duplicate not from a crash"
        # Delivered unknowns are re-sent, unless the resend itself ended in doubt.
        expected = before[ch]["unknown_delivered"] - sum(1 for rid in doubted if got[ch][rid])
        if ch == "sms":  # a resend in doubt may find the first copy instead of sending
            assert len(twice) <= expected
        else:
            assert len(twice) == expected
        totals = summary["channels"][ch]
        assert totals["unknown"] == len(doubted) and totals["pending"] == 0, f"{ch}: {totals}"
        assert totals["sent"] == len(owed) - len(doubted), f"{ch}: {totals}"
        dupes[ch] = len(twice)
    assert dupes["push"] == 0
    return dupes


# -- the tests ---------------------------------------------------------------------------------
@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(list(CHANNELS.values())) as sandbox:
        yield sandbox


#: Server latency keeps requests in flight long enough to be caught by a kill, and
#: paces the three channels so that they are all sending most of the time.
LATENCY = {"sendgrid": 0.15, "onesignal": 0.06, "twilio": 0.002}


def make_harness(
    tmp_path: Path, sandbox: Sandbox, n: int, seed: int, error_rate: float = 0.0
) -> Harness:
    segment = make_segment(n, random.Random(seed))
    sandbox.servers["onesignal"].unregistered.update(segment.unregistered)
    sandbox.servers["twilio"].unsubscribed.update(segment.unsubscribed)
    for i, (provider, latency) in enumerate(LATENCY.items()):
        # Transient errors (503, nothing created) are retried, or resumed after a crash.
        sandbox.servers[provider].faults = Faults(
            latency=latency, error_rate=error_rate, seed=seed + i
        )
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_TOKEN")}
    for ch, provider in CHANNELS.items():
        env[TOKEN_ENV[ch]] = sandbox.servers[provider].token
    # With injected errors, enough retry rounds that no message exhausts them.
    config = write_campaign(tmp_path, segment, sandbox, retries=6 if error_rate else 2)
    return Harness(tmp_path, sandbox, segment, config, env)


def crash_and_verify(
    tmp_path: Path, sandbox: Sandbox, *, n: int, kills: int, seed: int, error_rate: float = 0.0
) -> str:
    h = make_harness(tmp_path, sandbox, n, seed, error_rate)
    try:
        log = CrashLog(seed)
        crash_repeatedly(h, kills, random.Random(seed), log)
        if kills >= 5:  # the schedule must have caught requests in flight
            assert any(sum(k.in_flight.values()) for k in log.kills), str(log)
        summary = h.complete("run")  # resumes the logical date's run to its end
        assert summary["status"] == "partial", f"{log}\n{summary}"  # refused addresses failed
        h.quiesce()
        observed = check_after_crashes(h, log, summary)
        # Running the logical date again sends nothing.
        received = h.received()
        again = h.complete("run")
        assert again["run_id"] == summary["run_id"] and h.received() == received
        # The declared policy for unknowns: re-sent only when asked.
        after = h.complete("resume", summary["run_id"], "--resend-unknown")
        h.quiesce()
        dupes = check_resend_unknown(h, log, after, observed)
        return (
            f"{log}\nworker starts: {h.attempts}; observed: {observed}; "
            f"duplicates after --resend-unknown: {dupes}"
        )
    finally:
        h.close()


def _seed(default: int) -> int:
    return int(os.environ.get("CRASH_SEED", default))


def test_crash_resume_small(tmp_path: Path, sandbox: Sandbox) -> None:
    """Two kills of a few hundred recipients x 3 channels."""
    print(crash_and_verify(tmp_path, sandbox, n=300, kills=2, seed=_seed(20260401)))


def test_crash_resume_many_kills(tmp_path: Path, sandbox: Sandbox) -> None:
    """Twelve kills at seeded random moments of a 3,000-recipient x 3-channel campaign."""
    print(crash_and_verify(tmp_path, sandbox, n=3000, kills=12, seed=_seed(4)))


def test_crash_resume_with_transient_errors(tmp_path: Path, sandbox: Sandbox) -> None:
    """Batches sent together are re-sent together after a crash, so OneSignal's
    idempotency keys still match. Eight kills while the providers answer 5% of
    requests with a 503."""
    print(crash_and_verify(tmp_path, sandbox, n=2000, kills=8, seed=_seed(8), error_rate=0.05))


def test_in_flight_batch_keeps_its_idempotency_key_after_transient_leftovers(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    """Deterministic: batch [0-3] has two content groups; the first is accepted, the
    second gets a 503 (pending, to be retried); the first group of batch [4-7] reaches
    OneSignal, which creates it, but the process is killed before the answer. The resume
    must re-send [4-7] with the same idempotency keys: no recipient notified twice."""
    server = sandbox.servers["onesignal"]
    tokens = [str(uuid.UUID(int=i + 1, version=4)) for i in range(12)]
    lines = ["customer_id,push_token,segment,opted_in_push"]
    lines += [f"c{i:02d},{t},{'a' if i % 2 else 'b'},yes" for i, t in enumerate(tokens)]
    (tmp_path / "segment.csv").write_text("\n".join(lines) + "\n")
    config = tmp_path / "campaign.toml"
    config.write_text(
        f"""
[pipeline]
name = "{PIPELINE}"
[source]
type = "csv"
path = "segment.csv"
[source.columns]
id = "customer_id"
[source.consent]
push = "opted_in_push"
[execution]
state_path = "state/ledger.db"
output_dir = "results"
[execution.retry]
delay_minutes = 0
[channels.push]
provider = "onesignal"
concurrency = 1
batch_size = 4
rate = {{}}
[channels.push.template]
body = "Offer {{{{ segment }}}}"
[channels.push.options]
{_toml_table(sandbox.channel_options("onesignal"))}
"""
    )
    env = {**os.environ, "PUSH_API_TOKEN": server.token}
    h = Harness(tmp_path, sandbox, Segment([], {}, {}, {}, {}), config, env)
    try:
        server.faults = Faults(stall_seconds=0.3)
        server.faults.fail_next("pass", 503, "stall")
        proc = h.spawn("run")
        _wait(lambda: len(server.request_times) >= 3, proc, time.monotonic())
        proc.kill()
        proc.wait(timeout=PROCESS_TIMEOUT)
        time.sleep(server.faults.stall_seconds)  # OneSignal creates it meanwhile
        h.quiesce()
        view = inspect_ledger(h.db, proc.pid, channels=["push"])
        assert view.in_flight["push"] == {"c04", "c05", "c06", "c07"}
        assert view.states["push"]["pending"] == 6  # c01, c03 (503) and c08-c11
        summary = h.complete("run")
        assert summary["channels"]["push"]["sent"] == 12
        h.quiesce()
        got = collections.Counter(f"c{tokens.index(m['to']):02d}" for m in server.messages)
        assert set(got) == {f"c{i:02d}" for i in range(12)}
        assert {rid: n for rid, n in got.items() if n > 1} == {}  # fails: {'c04': 2, 'c06': 2}
    finally:
        h.close()
