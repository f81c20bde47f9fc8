"""Generate ``customer_segments.csv``, the example campaign's customer segment.

Deterministic: the same seed always writes the same file, byte for byte, so the
committed CSV can be regenerated and compared::

    python make_segment.py                 # 300 rows, seed 20240101
    python make_segment.py --rows 20 --output small.csv

The data is fictitious and safe to send to a sandbox: e-mail addresses use the
reserved ``example.com/.org/.net`` domains, phone numbers the ranges reserved for
fiction (US ``555-01XX``, UK ``07700 900XXX``, Australia ``0491 570 XXX``).

Some rows are deliberately bad, so that a run shows every outcome:

* an empty ``customer_id`` or a consent value that is not yes/no/true/false/1/0
  (``maybe``): the source rejects the row (``rejected.csv`` in the run directory);
* addresses at ``invalid.example``: the SendGrid sandbox refuses them (HTTP 400);
* phone numbers in ``+1555010XXXX`` (a NANP exchange cannot start with 0) or not in
  E.164: the Twilio sandbox refuses them with error 21211;
* push tokens that are not Expo push tokens: the Expo sandbox answers
  ``DeviceNotRegistered``;
* empty addresses and ``no`` consent: the channel skips the recipient.
"""

from __future__ import annotations

import argparse
import csv
import random
import string
import sys
import unicodedata
from pathlib import Path

HEADER = [
    "customer_id",
    "email_address",
    "phone",
    "push_token",
    "first_name",
    "last_name",
    "segment",
    "city",
    "opted_in_email",
    "opted_in_sms",
    "opted_in_push",
]

FIRST_NAMES = (  # noqa: SIM905 - compact word list
    "Olivia Liam Emma Noah Amelia Oliver Ava Elijah Sophia James Isabella William Mia "
    "Lucas Charlotte Henry Harper Theodore Evelyn Mateo Aisha Wei Priya Kenji Fatima "
    "Diego Chloé José Zoë Łukasz Søren Ines Nadia Omar Hannah Jonas Leila Ravi Yuki Ana"
).split()
LAST_NAMES = (  # noqa: SIM905 - compact word list
    "Smith Johnson Williams Brown Jones Garcia Miller Davis Rodriguez Martinez Hernandez "
    "Lopez Wilson Anderson Thomas Taylor Moore Jackson Martin Lee Nguyen Patel Kim "
    "Müller Schmidt Dubois Rossi Novak Kowalski Andersson O'Brien Okafor Haddad Sato "
    "Chen Silva Costa"
).split()
#: (city, phone style)
CITIES = [
    ("New York", "us"),
    ("Chicago", "us"),
    ("Austin", "us"),
    ("Seattle", "us"),
    ("San Francisco", "us"),
    ("Denver", "us"),
    ("Boston", "us"),
    ("Miami", "us"),
    ("London", "uk"),
    ("Manchester", "uk"),
    ("Edinburgh", "uk"),
    ("Sydney", "au"),
    ("Melbourne", "au"),
]
US_AREA_CODES = {
    "New York": "212",
    "Chicago": "312",
    "Austin": "512",
    "Seattle": "206",
    "San Francisco": "415",
    "Denver": "303",
    "Boston": "617",
    "Miami": "305",
}
DOMAINS = ["example.com", "example.org", "example.net"]
YES = ["yes", "true", "1", "Y", "Yes", "TRUE"]
NO = ["no", "false", "0", "N", "No", "FALSE"]
BAD_CONSENT = ["maybe", "unknown", "2", "opt-in"]
TOKEN_ALPHABET = string.ascii_letters + string.digits


def ascii_slug(text: str) -> str:
    """``"Łukasz"`` -> ``"lukasz"``: NFKD, accents dropped, lower case, letters only."""
    text = text.replace("Ł", "L").replace("ł", "l").replace("ø", "o").replace("Ø", "O")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and c.isalpha()).lower()


def phone_number(rng: random.Random, city: str, style: str) -> str:
    """A fictitious mobile number in E.164 for ``city``."""
    if style == "uk":
        return f"+447700900{rng.randrange(0, 1000):03d}"
    if style == "au":
        return f"+61491570{rng.randrange(6, 160):03d}"
    return f"+1{US_AREA_CODES[city]}55501{rng.randrange(0, 100):02d}"


def consent(rng: random.Random, p_yes: float) -> str:
    return rng.choice(YES) if rng.random() < p_yes else rng.choice(NO)


def make_rows(count: int, seed: int) -> list[list[str]]:
    """``count`` rows (after the header), the same for the same ``seed``."""
    rng = random.Random(seed)
    rows: list[list[str]] = []
    for n in range(count):
        first = rng.choice(FIRST_NAMES)
        last = rng.choice(LAST_NAMES)
        city, style = rng.choice(CITIES)
        customer_id = f"C{10001 + n}"
        local = f"{ascii_slug(first)}.{ascii_slug(last)}{n + 1}"
        email = f"{local}@{rng.choice(DOMAINS)}" if rng.random() < 0.93 else ""
        phone = phone_number(rng, city, style) if rng.random() < 0.8 else ""
        token = ""
        if rng.random() < 0.7:
            token = "ExponentPushToken[" + "".join(rng.choices(TOKEN_ALPHABET, k=22)) + "]"
        segment = "premium" if rng.random() < 0.3 else "standard"
        rows.append(
            [
                customer_id,
                email,
                phone,
                token,
                first,
                last,
                segment,
                city,
                consent(rng, 0.85),
                consent(rng, 0.7),
                consent(rng, 0.75),
            ]
        )
    # Deliberate problems, at fixed positions so that the file stays deterministic.
    bad = random.Random(seed + 1)
    positions = bad.sample(range(count), k=min(count, 18))
    for kind, index in zip(
        ["no_id"] * 3
        + ["bad_consent"] * 3
        + ["bad_email"] * 3
        + ["bad_phone"] * 4
        + ["bad_token"] * 3
        + ["no_phone_consent_yes"] * 2,
        positions,
        strict=False,
    ):
        row = rows[index]
        if kind == "no_id":
            row[0] = ""
        elif kind == "bad_consent":
            row[8 + bad.randrange(3)] = bad.choice(BAD_CONSENT)
        elif kind == "bad_email":
            row[1] = f"{ascii_slug(row[4])}.bounce{index}@invalid.example"
            row[8] = "yes"
        elif kind == "bad_phone":
            # +1555010XXXX: reserved, never a real number; the Twilio sandbox says 21211.
            row[2] = f"+1555010{bad.randrange(0, 10_000):04d}" if index % 2 else "555-0143"
            row[9] = "yes"
        elif kind == "bad_token":
            row[3] = bad.choice(["ExponentPushToken[]", "fcm:dGVzdC10b2tlbg", "null"])
            row[10] = "yes"
        else:
            row[2] = ""
            row[9] = "yes"
    return rows


def write(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(HEADER)
        writer.writerows(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=300, help="data rows (default 300)")
    parser.add_argument("--seed", type=int, default=20240101, help="random seed")
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).with_name("customer_segments.csv"),
        help="where to write (default: customer_segments.csv beside this script)",
    )
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    rows = make_rows(args.rows, args.seed)
    write(args.output, rows)
    print(f"wrote {len(rows)} rows to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
