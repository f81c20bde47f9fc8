"""Deterministic customer-segment CSV for the benchmarks.

Usage::

    python benchmarks/gen_segment.py [--rows N] [--seed S] [--out FILE]

Without ``--out`` the file goes to ``benchmarks/.data/segment-<rows>-s<seed>.csv``
and is reused when it is already there (generation is deterministic, so a cached file
is the same file). Columns, as in ``/work/shared/reference/perf-scripts/gen_csv.py``
(about 120 bytes a row)::

    customer_id,email,phone,push_token,first_name,segment,
    opted_in_email,opted_in_sms,opted_in_push,country,timezone

Phones are mobile numbers of the row's country (about 96% valid for ``phonenumbers``),
push tokens Expo-shaped. About 1 row in 50 has an invalid email, 1 in 40 an invalid
phone, and 1 in 20 an empty
opt-in cell (which campaignkit reads as "no consent").
"""

from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / ".data"

HEADER = [
    "customer_id",
    "email",
    "phone",
    "push_token",
    "first_name",
    "segment",
    "opted_in_email",
    "opted_in_sms",
    "opted_in_push",
    "country",
    "timezone",
]
FIRST = ["Ana", "Ben", "Chloe", "Dmitri", "Emma", "Farid", "Grace", "Hiro"]
FIRST += ["Ines", "Jonas", "Kai", "Lena", "Mateo", "Nora", "Omar", "Priya"]
SEGMENTS = ["vip", "churn_risk", "new", "dormant", "loyal", "trial"]
GEO = [
    ("US", "America/New_York", "+1415", 7),
    ("GB", "Europe/London", "+4478", 8),
    ("DE", "Europe/Berlin", "+49151", 8),
    ("FR", "Europe/Paris", "+336", 8),
    ("BR", "America/Sao_Paulo", "+55119", 8),
    ("IN", "Asia/Kolkata", "+919", 9),
    ("JP", "Asia/Tokyo", "+8190", 8),
    ("AU", "Australia/Sydney", "+614", 8),
]
DOMAINS = ["example.com", "mail.example.org", "corp.example.net"]


def write_segment(out: Path, rows: int, seed: int = 42) -> None:
    """Write ``rows`` customers to ``out`` (atomically: a temporary file, then rename)."""
    rnd = random.Random(seed)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i in range(rows):
            name = rnd.choice(FIRST)
            email = f"{name.lower()}.{i}@{rnd.choice(DOMAINS)}"
            if i % 50 == 7:
                email = email.replace("@", "_at_")  # invalid
            country, tz, prefix, digits = rnd.choice(GEO)
            # Mobile ranges that phonenumbers accepts (about 96% valid numbers).
            phone = f"{prefix}{rnd.randrange(2 * 10 ** (digits - 1), 10**digits)}"
            if i % 40 == 3:
                phone = phone[1:5]  # invalid
            token = f"ExponentPushToken[{rnd.getrandbits(88):022x}]"
            opt = [str(rnd.randint(0, 1)) for _ in range(3)]
            if i % 20 == 11:
                opt[i % 3] = ""  # empty consent cell
            w.writerow(
                [f"C{i:09d}", email, phone, token, name, rnd.choice(SEGMENTS), *opt, country, tz]
            )
    tmp.replace(out)


def ensure_segment(rows: int, seed: int = 42, data_dir: Path = DATA_DIR) -> Path:
    """Return the cached segment file for (rows, seed), generating it if missing."""
    path = data_dir / f"segment-{rows}-s{seed}.csv"
    if not path.exists():
        write_segment(path, rows, seed)
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", type=Path, help="write here (always regenerates)")
    a = ap.parse_args(argv)
    if a.out:
        write_segment(a.out, a.rows, a.seed)
        path = a.out
    else:
        path = ensure_segment(a.rows, a.seed)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, {a.rows:,} rows)")


if __name__ == "__main__":
    main()
