"""Address validation and normalisation: e-mail, phone (E.164) and push tokens.

The first step of audience selection: a recipient whose address for a channel is
not valid is skipped as ``invalid_address``. Everything here is pure, thread-safe
and fast enough for a million rows.

Modules by responsibility: :mod:`._email` (e-mail syntax and keys), :mod:`._phone`
(E.164 phone numbers, SMS sender ids), :mod:`._push` (push tokens per provider) and
:mod:`._validator` (:class:`AddressValidator`, one channel's check).
"""

from __future__ import annotations

from ._email import dedupe_key_email, email_error, normalize_email
from ._phone import normalize_phone, valid_sms_sender
from ._push import PUSH_MODES, valid_push_token
from ._validator import AddressKind, AddressValidator

__all__ = [
    "PUSH_MODES",
    "AddressKind",
    "AddressValidator",
    "dedupe_key_email",
    "email_error",
    "normalize_email",
    "normalize_phone",
    "valid_push_token",
    "valid_sms_sender",
]
