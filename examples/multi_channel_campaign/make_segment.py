"""Generate ``customer_segments.csv``, the example campaign's customer segment.

Deterministic: the same seed always writes the same file, byte for byte, so the
committed CSV can be regenerated and compared::

    python make_segment.py                 # 300 rows, seed 20240101
    python make_segment.py --rows 20 --output small.csv

The data is fictitious and safe to send to a sandbox: e-mail addresses use the
reserved ``example.com/.org/.net`` domains, phone numbers the ranges reserved for
fiction that are still valid numbers (US ``555-0100`` to ``555-0199``; UK Ofcom drama
numbers ``020 7946 0xxx``, ``0161 496 0xxx``, ``0131 496 0xxx``; Australia's
``0491 570 006`` to ``0491 570 159``). Phone numbers are written the way customers
type them: some in E.164, most in their country's national format, which the campaign
reads with the ``country`` column (``region_field``) or its ``phone_region``. Every
generated number is distinct; duplicates are deliberate (below).

Some rows are deliberately bad, so that a run shows every outcome:

* an empty ``customer_id`` or a consent value that is not yes/no/true/false/1/0
  (``maybe``): the source rejects the row (``rejected.csv`` in the run directory);
* addresses that are not addresses (``x@@example.com``, ``555-0143``, the UK drama
  *mobile* range ``07700 900xxx``, which is reserved and not a valid number, Expo
  tokens that are empty or not Expo tokens): ``invalid_address``, never sent;
* the same customer twice, under another id, with the e-mail address in other letter
  case or the phone number in another format: ``duplicate``;
* the addresses listed in ``suppressions/`` (written here as :data:`SUPPRESSED_EMAILS`
  and :data:`SUPPRESSED_PHONE`): ``suppressed``;
* addresses at ``invalid.example``: the SendGrid sandbox refuses them (HTTP 400);
* Twilio's magic test numbers ``+15005550001`` (refused, error 21211) and
  ``+15005550004`` (the recipient sent STOP, error 21610: the number is added to the
  ledger's suppression list, and later runs skip it as ``suppressed``);
* empty addresses and ``no`` consent: the channel skips the recipient.

The ``standard`` segment is ``filtered`` out of the e-mail channel, which goes to the
``premium`` segment only; names outside the GSM-7 alphabet (``Łukasz``, ``Zoë``) make
an SMS UCS-2, and the longer ones exceed the SMS channel's ``max_sms_segments``.
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
    "country",
    "timezone",
    "opted_in_email",
    "opted_in_sms",
    "opted_in_push",
]
EMAIL, PHONE, TOKEN, SEGMENT = 1, 2, 3, 6
CONSENT_EMAIL, CONSENT_SMS, CONSENT_PUSH = 10, 11, 12

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
#: city -> (country, IANA time zone, phone number prefix)
CITIES: dict[str, tuple[str, str, str]] = {
    "New York": ("US", "America/New_York", "212"),
    "Chicago": ("US", "America/Chicago", "312"),
    "Austin": ("US", "America/Chicago", "512"),
    "Seattle": ("US", "America/Los_Angeles", "206"),
    "San Francisco": ("US", "America/Los_Angeles", "415"),
    "Denver": ("US", "America/Denver", "303"),
    "Boston": ("US", "America/New_York", "617"),
    "Miami": ("US", "America/New_York", "305"),
    "London": ("GB", "Europe/London", "020 7946 0"),
    "Manchester": ("GB", "Europe/London", "0161 496 0"),
    "Edinburgh": ("GB", "Europe/London", "0131 496 0"),
    "Sydney": ("AU", "Australia/Sydney", "0491 570 "),
    "Melbourne": ("AU", "Australia/Melbourne", "0491 570 "),
}
DOMAINS = ["example.com", "example.org", "example.net"]
YES = ["yes", "true", "1", "Y", "Yes", "TRUE"]
NO = ["no", "false", "0", "N", "No", "FALSE"]
BAD_CONSENT = ["maybe", "unknown", "2", "opt-in"]
TOKEN_ALPHABET = string.ascii_letters + string.digits

#: E-mail addresses of customers who unsubscribed; ``suppressions/email.txt`` lists
#: them (in other letter case: suppression matches e-mail addresses without case).
SUPPRESSED_EMAILS = ("opted.out@example.com", "no.more.offers@example.org")
#: A number that ``suppressions/sms.csv`` lists in national format, (312) 555-0100;
#: kept out of the numbers handed to other customers.
SUPPRESSED_PHONE = "+13125550100"
#: Where the first bounce goes, so that the first 50 e-mails include a failure.
EARLY_BOUNCE = 4

#: The deliberate problems, in the order their rows are drawn.
PROBLEMS = (
    ["no_id"] * 3
    + ["bad_consent"] * 3
    + ["bounce_email"] * 2
    + ["bad_email"] * 2
    + ["dup_email"] * 2
    + ["dup_phone"] * 2
    + ["bad_phone", "short_phone", "uk_drama_mobile"]
    + ["twilio_invalid", "twilio_stop"]
    + ["bad_token"] * 3
    + ["suppressed_email"] * len(SUPPRESSED_EMAILS)
    + ["suppressed_phone"]
    + ["no_phone_consent_yes"] * 2
)


def ascii_slug(text: str) -> str:
    """``"Łukasz"`` -> ``"lukasz"``: NFKD, accents dropped, lower case, letters only."""
    text = text.replace("Ł", "L").replace("ł", "l").replace("ø", "o").replace("Ø", "O")
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if c.isascii() and c.isalpha()).lower()


class Phones:
    """Distinct fictitious numbers per city, written as customers type them."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used = {SUPPRESSED_PHONE}

    def number(self, city: str) -> str:
        country, _, prefix = CITIES[city]
        while True:
            if country == "US":
                line = f"01{self.rng.randrange(0, 100):02d}"
                e164 = f"+1{prefix}555{line}"
                forms = [e164, f"({prefix}) 555-{line}", f"{prefix}-555-{line}"]
            elif country == "GB":
                national = f"{prefix}{self.rng.randrange(0, 1000):03d}"
                e164 = "+44" + national[1:].replace(" ", "")
                forms = [e164, national, "+44 " + national[1:]]
            else:
                national = f"{prefix}{self.rng.randrange(6, 160):03d}"
                e164 = "+61" + national[1:].replace(" ", "")
                forms = [e164, national, national]
            if e164 not in self.used:
                self.used.add(e164)
                return self.rng.choice(forms)


def consent(rng: random.Random, p_yes: float) -> str:
    return rng.choice(YES) if rng.random() < p_yes else rng.choice(NO)


def make_rows(count: int, seed: int) -> list[list[str]]:
    """``count`` rows (after the header), the same for the same ``seed``."""
    rng = random.Random(seed)
    phones = Phones(rng)
    cities = list(CITIES)
    rows: list[list[str]] = []
    for n in range(count):
        first = rng.choice(FIRST_NAMES)
        last = rng.choice(LAST_NAMES)
        city = rng.choice(cities)
        country, zone, _ = CITIES[city]
        local = f"{ascii_slug(first)}.{ascii_slug(last)}{n + 1}"
        email = f"{local}@{rng.choice(DOMAINS)}" if rng.random() < 0.93 else ""
        phone = phones.number(city) if rng.random() < 0.8 else ""
        token = ""
        if rng.random() < 0.7:
            token = "ExponentPushToken[" + "".join(rng.choices(TOKEN_ALPHABET, k=22)) + "]"
        segment = "premium" if rng.random() < 0.3 else "standard"
        rows.append(
            [
                f"C{10001 + n}",
                email,
                phone,
                token,
                first,
                last,
                segment,
                city,
                country,
                zone,
                consent(rng, 0.85),
                consent(rng, 0.7),
                consent(rng, 0.75),
            ]
        )
    _add_problems(rows, random.Random(seed + 1))
    return rows


def _add_problems(rows: list[list[str]], bad: random.Random) -> None:
    """Make the deliberate problems, at positions drawn from ``bad``."""
    count = len(rows)
    early = EARLY_BOUNCE if count > EARLY_BOUNCE else None
    pool = [i for i in range(count) if i != early]
    positions = bad.sample(pool, k=min(len(pool), len(PROBLEMS)))
    if early is not None:
        first_bounce = PROBLEMS.index("bounce_email")
        positions.insert(first_bounce, early)
    taken = set(positions)
    with_email = [i for i in range(count) if i not in taken and rows[i][EMAIL]]
    with_phone = [i for i in range(count) if i not in taken and rows[i][PHONE]]
    email_sources = bad.sample(with_email, k=min(len(with_email), PROBLEMS.count("dup_email")))
    phone_sources = bad.sample(with_phone, k=min(len(with_phone), PROBLEMS.count("dup_phone")))
    suppressed = iter(SUPPRESSED_EMAILS)
    for kind, index in zip(PROBLEMS, positions, strict=False):
        row = rows[index]
        if kind == "no_id":
            row[0] = ""
        elif kind == "bad_consent":
            row[CONSENT_EMAIL + bad.randrange(3)] = bad.choice(BAD_CONSENT)
        elif kind == "bounce_email":
            # Valid, but the SendGrid sandbox refuses every address at invalid.example.
            row[EMAIL] = f"{ascii_slug(row[4])}.bounce{index}@invalid.example"
            row[SEGMENT], row[CONSENT_EMAIL] = "premium", "yes"
        elif kind == "bad_email":
            local = f"{ascii_slug(row[4])}.{ascii_slug(row[5])}"
            row[EMAIL] = bad.choice([f"{local}@@example.com", f"{local}.example.com"])
            row[SEGMENT], row[CONSENT_EMAIL] = "premium", "yes"
        elif kind == "dup_email" and email_sources:
            # The same customer under a second id: the address in other letter case.
            source = rows[email_sources.pop()]
            row[EMAIL] = source[EMAIL].capitalize()
            row[SEGMENT] = source[SEGMENT] = "premium"
            row[CONSENT_EMAIL] = source[CONSENT_EMAIL] = "yes"
        elif kind == "dup_phone" and phone_sources:
            # The same number in another format (E.164 against national), same country.
            source = rows[phone_sources.pop()]
            row[PHONE] = _other_format(source[PHONE])
            row[7:10] = source[7:10]
            row[CONSENT_SMS] = source[CONSENT_SMS] = "yes"
        elif kind in ("bad_phone", "short_phone", "uk_drama_mobile"):
            row[PHONE] = {
                "bad_phone": f"+1555010{bad.randrange(0, 10_000):04d}",  # no such exchange
                "short_phone": "555-0143",  # no area code
                "uk_drama_mobile": f"07700 900{bad.randrange(0, 1000):03d}",
            }[kind]
            if kind == "uk_drama_mobile":
                row[7:10] = ["London", "GB", "Europe/London"]
            row[CONSENT_SMS] = "yes"
        elif kind in ("twilio_invalid", "twilio_stop"):
            row[PHONE] = "+15005550001" if kind == "twilio_invalid" else "+15005550004"
            row[CONSENT_SMS] = "yes"
        elif kind == "bad_token":
            row[TOKEN] = bad.choice(["ExponentPushToken[]", "fcm:dGVzdC10b2tlbg", "null"])
            row[CONSENT_PUSH] = "yes"
        elif kind == "suppressed_email":
            row[EMAIL] = next(suppressed)
            row[SEGMENT], row[CONSENT_EMAIL] = "premium", "yes"
        elif kind == "suppressed_phone":
            row[PHONE] = SUPPRESSED_PHONE
            row[7:10] = ["Chicago", "US", "America/Chicago"]
            row[CONSENT_SMS] = "yes"
        elif kind == "no_phone_consent_yes":
            row[PHONE] = ""
            row[CONSENT_SMS] = "yes"


def _other_format(phone: str) -> str:
    """``phone`` written differently, the same number once normalised."""
    digits = phone.replace(" ", "").replace("(", "").replace(")", "").replace("-", "")
    if phone.startswith("+1"):
        return f"({digits[2:5]}) {digits[5:8]}-{digits[8:]}"
    if phone.startswith("+"):
        return phone.replace(" ", "") if " " in phone else phone[:3] + " " + phone[3:]
    if len(digits) == 10 and not digits.startswith("0"):
        return f"+1{digits}"
    return phone.replace(" ", "")


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
