"""E-mail addresses: syntax, the normalised form and the deduplication key.

**E-mail** syntax is checked with ``email-validator`` (no DNS lookups,
internationalised addresses allowed, quoted local parts, display names and domain
literals refused). The normalised address is the library's ``normalized`` form:
the domain lower-cased (and an IDNA ``xn--`` domain given in Unicode), the local
part kept as typed except for the RFC 2142 role names (``Postmaster`` ->
``postmaster``). Local parts are case-sensitive in theory but no mailbox provider
treats them so: :func:`dedupe_key_email` (the whole address lower-cased) is the key
for deduplication and suppression, while the address sent to stays as normalised.
Plus-addressing is kept: ``ann+news@x.org`` and ``ann@x.org`` are different keys.

Validating with the library costs ~100 µs an address, so the common shape (an
ASCII dot-atom local part at an ASCII host name whose top-level domain is letters,
no ``--`` anywhere in the domain) is decided by one regular expression with
exactly the library's result; everything else (Unicode, Punycode, odd shapes,
every invalid address except those without ``@``) goes to the library. The test
suite checks the fast path against the library.
"""

from __future__ import annotations

import re
from typing import Final

import email_validator
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES

__all__ = ["dedupe_key_email", "email_error", "normalize_email"]

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: The common shape: dot-atom local part @ LDH labels, a letters-only TLD. Every
#: string it matches (within 254 characters, no ``--`` in the domain, no special-use
#: TLD) is valid for email-validator, which returns it with the domain lower-cased.
_EMAIL_FAST = re.compile(
    rf"([{_ATEXT}]+(?:\.[{_ATEXT}]+)*)@((?:{_LABEL}\.)+[A-Za-z]{{2,63}})", re.ASCII
)
_CASE_INSENSITIVE_LOCAL: Final = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)
_ROLE_MAX = max(map(len, _CASE_INSENSITIVE_LOCAL))
_SPECIAL_USE: Final = tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)
_SPECIAL_TLDS: Final = frozenset(d for d in _SPECIAL_USE if "." not in d)
_SPECIAL_SUFFIXES: Final = tuple("." + d for d in _SPECIAL_USE if "." in d)
_EMAIL_MAX = 254


def normalize_email(value: str) -> str | None:
    """Validate an e-mail address's syntax and return its normalised form.

    Surrounding whitespace is ignored. No DNS lookup is made.

    Returns:
        The address as ``email-validator`` normalises it (domain lower-cased, IDNA
        domains in Unicode, RFC 2142 role local parts lower-cased, the rest of the
        local part as given), or ``None`` when it is not a valid address.
        Idempotent: a returned address normalises to itself.
    """
    value = value.strip()
    match = _EMAIL_FAST.fullmatch(value)
    if match is not None and len(value) <= _EMAIL_MAX:
        local, domain = match.groups()
        domain = domain.lower()
        tld = domain[domain.rfind(".") + 1 :]
        if (
            "--" not in domain
            and tld not in _SPECIAL_TLDS
            and not (_SPECIAL_SUFFIXES and domain.endswith(_SPECIAL_SUFFIXES))
        ):
            if len(local) <= _ROLE_MAX and local.lower() in _CASE_INSENSITIVE_LOCAL:
                local = local.lower()
            return f"{local}@{domain}"
    if "@" not in value:
        return None
    return _email_slow(value)


def _email_slow(value: str) -> str | None:
    """``email-validator``'s verdict (the reference the fast path must agree with)."""
    try:
        result = email_validator.validate_email(
            value, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError:
        return None
    normalized: str = result.normalized
    return normalized


def email_error(value: str) -> str | None:
    """Why ``value`` is not a valid address (``email-validator``'s message), or ``None``."""
    try:
        email_validator.validate_email(
            value.strip(), check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as exc:
        return str(exc)
    return None


def dedupe_key_email(normalized: str) -> str:
    """The deduplication and suppression key of a normalised address: the whole
    address lower-cased (mailbox providers treat local parts case-insensitively)."""
    return normalized.lower()
