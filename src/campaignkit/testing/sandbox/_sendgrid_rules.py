"""What SendGrid's v3 Mail Send checks in a request body, and its refusals.

:func:`validate` gives the 400 errors of a body (every problem found, as SendGrid
reports them: ``{"message", "field", "help"}`` with SendGrid's texts), and
:func:`unverified_sender` the 403 of a sender that is not a verified Sender Identity.
:class:`~campaignkit.testing.sandbox.sendgrid.SendGridServer` answers with them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from typing import Any

__all__ = ["EMAIL", "error", "unverified_sender", "validate"]

EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"

_INVALID_ADDRESS = "Does not contain a valid address."
_TO_REQUIRED = (
    "The to array is required for all personalization objects, and must have at least "
    "one email object with a valid email address."
)
_FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that "
    "requires the email parameter, but may also contain a name parameter."
)
_SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template "
    "with a subject defined or if every personalization has a subject defined."
)
_TEMPLATE_ID = re.compile(
    r"d-[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_TEMPLATE_INVALID = "The template_id must be a valid GUID, you provided '{}'."
_TEMPLATE_UNKNOWN = "The template_id {} does not exist."
_UNVERIFIED_SENDER = (
    "The from address does not match a verified Sender Identity. Mail cannot be sent "
    "until this error is resolved. Visit "
    "https://sendgrid.com/docs/for-developers/sending-email/sender-identity/ to see the "
    "Sender Identity requirements"
)
_CONTENT_REQUIRED = "Unless a valid template_id is provided, the content array is required."
_CONTENT_VALUE = "The content value must be a string at least one character in length."
_CONTENT_ORDER = (
    "If present, text/plain and text/x-amp-html must be first, followed by text/html, "
    "followed by any other content."
)


def error(message: str, field: str | None = None, anchor: str | None = None) -> dict[str, Any]:
    """One of SendGrid's error objects, ``{"message", "field", "help"}``."""
    return {"message": message, "field": field, "help": f"{_HELP}#{anchor}" if anchor else None}


def validate(
    body: Mapping[str, Any],
    *,
    is_invalid: Callable[[str], bool],
    max_substitution_bytes: int,
    templates: Collection[str] | None,
) -> list[dict[str, Any]]:
    """SendGrid's 400 errors for a Mail Send body, in SendGrid's order (empty: valid).

    The parts of the contract are checked in turn: the sender, the personalizations
    (each one's recipients, sender, template data, substitutions, headers and
    custom_args, then the total of recipients), the subject, the template and
    content, then the top-level categories, custom_args, asm and send_at. Past the
    limit of personalizations nothing after them is checked.

    Args:
        is_invalid: whether SendGrid refuses a recipient address.
        max_substitution_bytes: the most bytes of substitutions per personalization.
        templates: the template ids that exist (``None``: any well-formed id).
    """
    errors = _check_from(body.get("from"))
    found = body.get("personalizations")
    personalizations: list[Any] = found if isinstance(found, list) else []
    count_error = _check_personalization_count(personalizations)
    if count_error is not None:
        errors.append(count_error)
        if personalizations:
            return errors  # over the limit
    errors += _check_personalizations(personalizations, is_invalid, max_substitution_bytes)
    errors += _check_subject(body, personalizations)
    errors += _check_template_and_content(body, templates)
    errors += _check_categories(body.get("categories"))
    errors += _check_custom_args(body.get("custom_args"))
    errors += _check_asm(body.get("asm"))
    errors += _check_send_at(body.get("send_at"))
    return errors


def _check_from(sender: Any) -> list[dict[str, Any]]:
    """The top-level ``from``: an object with a valid ``email``."""
    if not isinstance(sender, dict) or not isinstance(sender.get("email"), str):
        return [error(_FROM_REQUIRED, "from", "message.from")]
    if not EMAIL.fullmatch(sender["email"]):
        return [error(_INVALID_ADDRESS, "from.email", "message.from")]
    return []


def _check_personalization_count(personalizations: list[Any]) -> dict[str, Any] | None:
    """``personalizations``: 1 to 1,000 of them."""
    if not personalizations:
        return error(
            "You must have at least one personalization.",
            "personalizations",
            "message.personalizations",
        )
    if len(personalizations) > 1000:
        return error(
            "The personalization block is limited to 1000 personalizations per API "
            f"request. You have provided {len(personalizations)} personalizations. "
            "Please consider splitting this into multiple requests and resending "
            "your request.",
            "personalizations",
            "message.personalizations",
        )
    return None


def _check_personalizations(
    personalizations: list[Any], is_invalid: Callable[[str], bool], max_substitution_bytes: int
) -> list[dict[str, Any]]:
    """Every personalization, then the limit on recipients across them."""
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()  # addresses so far, lower-cased
    recipients = 0
    for i, p in enumerate(personalizations):
        where = f"personalizations.{i}"
        if not isinstance(p, dict):
            errors.append(error("Bad Request", where, "message.personalizations"))
            continue
        recipients += sum(len(entries) for _, entries in _address_lists(p))
        errors += _check_recipients(p, where, is_invalid, seen)
        errors += _check_personalization_extras(p, where)
        errors += _check_substitutions(p.get("substitutions") or {}, where, max_substitution_bytes)
        for name in ("headers", "custom_args"):
            value = p.get(name) or {}
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                errors.append(error(f"The {name} values must be strings.", f"{where}.{name}"))
    if recipients > 1000:
        errors.append(
            error(
                "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
                "personalizations",
                "message.personalizations",
            )
        )
    return errors


def _address_lists(p: Mapping[str, Any]) -> list[tuple[str, list[Any]]]:
    """A personalization's ``to``, ``cc`` and ``bcc`` entries (a list each)."""
    lists = []
    for kind in ("to", "cc", "bcc"):
        entries = p.get(kind) or []
        lists.append((kind, entries if isinstance(entries, list) else []))
    return lists


def _check_recipients(
    p: Mapping[str, Any], where: str, is_invalid: Callable[[str], bool], seen: set[str]
) -> list[dict[str, Any]]:
    """A personalization's ``to`` (required), and its ``to``, ``cc`` and ``bcc``
    addresses: each valid, and none seen before in the request (``seen`` grows)."""
    errors = []
    to = p.get("to")
    if not isinstance(to, list) or not to:
        errors.append(error(_TO_REQUIRED, f"{where}.to", "message.personalizations.to"))
    for kind, entries in _address_lists(p):
        for j, entry in enumerate(entries):
            address = entry.get("email") if isinstance(entry, dict) else None
            if not isinstance(address, str) or is_invalid(address):
                errors.append(
                    error(
                        _INVALID_ADDRESS,
                        f"{where}.{kind}.{j}.email",
                        f"message.personalizations.{kind}",
                    )
                )
                continue
            if address.lower() in seen:
                errors.append(
                    error(
                        "Each unique email address in the personalizations array "
                        "should only be included once. You have included "
                        f"{address} more than once.",
                        "personalizations",
                        "message.personalizations",
                    )
                )
            seen.add(address.lower())
    return errors


def _check_personalization_extras(p: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """A personalization's own ``from`` and ``dynamic_template_data``."""
    errors = []
    if "from" in p:
        sender = p["from"]
        address = sender.get("email") if isinstance(sender, dict) else None
        if not isinstance(address, str) or not EMAIL.fullmatch(address):
            errors.append(error(_INVALID_ADDRESS, f"{where}.from.email", "message.from"))
    data = p.get("dynamic_template_data")
    if data is not None and not isinstance(data, dict):
        errors.append(
            error(
                "The dynamic_template_data must be an object.",
                f"{where}.dynamic_template_data",
                "message.personalizations.dynamic_template_data",
            )
        )
    return errors


def _check_substitutions(
    substitutions: Any, where: str, max_substitution_bytes: int
) -> list[dict[str, Any]]:
    """A personalization's ``substitutions``: strings, within the size limit."""
    if not isinstance(substitutions, dict) or not all(
        isinstance(v, str) for v in substitutions.values()
    ):
        message = "Substitutions must be strings."
    elif (
        sum(len(k.encode()) + len(v.encode()) for k, v in substitutions.items())
        > max_substitution_bytes
    ):
        message = (
            f"The substitutions in a personalization may not exceed {max_substitution_bytes} bytes."
        )
    else:
        return []
    return [error(message, f"{where}.substitutions", "message.personalizations.substitutions")]


def _check_subject(body: Mapping[str, Any], personalizations: list[Any]) -> list[dict[str, Any]]:
    """A subject at the top level or in every personalization, unless templated."""
    subject_missing = any(
        isinstance(p, dict) and not (isinstance(p.get("subject"), str) and p["subject"])
        for p in personalizations
    )
    top_subject = body.get("subject")
    if (
        subject_missing
        and "template_id" not in body
        and not (isinstance(top_subject, str) and top_subject)
    ):
        return [error(_SUBJECT_REQUIRED, "subject", "message.subject")]
    return []


def _check_template_and_content(
    body: Mapping[str, Any], templates: Collection[str] | None
) -> list[dict[str, Any]]:
    """``template_id`` when given (then ``content`` is optional), else ``content``."""
    if "template_id" not in body:
        return _check_content(body.get("content"))
    errors = _check_template(body["template_id"], templates)
    if body.get("content"):
        errors += _check_content(body["content"])
    return errors


def _check_template(template_id: Any, templates: Collection[str] | None) -> list[dict[str, Any]]:
    """A well-formed template id, one of ``templates`` when that is given."""
    if not isinstance(template_id, str) or not _TEMPLATE_ID.fullmatch(template_id):
        message = _TEMPLATE_INVALID.format(template_id)
    elif templates is not None and template_id not in templates:
        message = _TEMPLATE_UNKNOWN.format(template_id)
    else:
        return []
    return [error(message, "template_id", "message.template_id")]


def _check_content(content: Any) -> list[dict[str, Any]]:
    """A non-empty ``content`` list of non-empty values, ``text/plain`` first."""
    if not isinstance(content, list) or not content:
        return [error(_CONTENT_REQUIRED, "content", "message.content")]
    errors = []
    types = []
    for k, part in enumerate(content):
        value = part.get("value") if isinstance(part, dict) else None
        types.append(part.get("type") if isinstance(part, dict) else None)
        if not isinstance(value, str) or not value:
            errors.append(error(_CONTENT_VALUE, f"content.{k}.value", "message.content.value"))
    if "text/plain" in types and types.index("text/plain") != 0:
        errors.append(error(_CONTENT_ORDER, "content", "message.content"))
    return errors


def _check_categories(categories: Any) -> list[dict[str, Any]]:
    """Top-level ``categories``: at most 10 strings of at most 255 characters."""
    if categories is None:
        return []
    if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
        return [error("Categories must be strings.", "categories", "message.categories")]
    if len(categories) > 10:
        return [error("You may not have more than 10 categories per request.", "categories")]
    if any(len(c) > 255 for c in categories):
        return [error("A category cannot be longer than 255 characters.", "categories")]
    return []


def _check_custom_args(custom_args: Any) -> list[dict[str, Any]]:
    """Top-level ``custom_args``: string values."""
    if custom_args is not None and (
        not isinstance(custom_args, dict)
        or not all(isinstance(v, str) for v in custom_args.values())
    ):
        return [error("The custom_args values must be strings.", "custom_args")]
    return []


def _check_asm(asm: Any) -> list[dict[str, Any]]:
    """``asm``: an integer ``group_id`` and at most 25 integer ``groups_to_display``."""
    if asm is None:
        return []
    errors = []
    group = asm.get("group_id") if isinstance(asm, dict) else None
    if isinstance(group, bool) or not isinstance(group, int):
        errors.append(error("The asm.group_id must be an integer.", "asm.group_id", "message.asm"))
    shown = asm.get("groups_to_display", []) if isinstance(asm, dict) else []
    if (
        not isinstance(shown, list)
        or len(shown) > 25
        or not all(isinstance(g, int) and not isinstance(g, bool) for g in shown)
    ):
        errors.append(
            error(
                "The asm.groups_to_display must be an array of at most 25 integers.",
                "asm.groups_to_display",
                "message.asm",
            )
        )
    return errors


def _check_send_at(send_at: Any) -> list[dict[str, Any]]:
    """``send_at``: an integer (a Unix timestamp)."""
    if send_at is not None and (isinstance(send_at, bool) or not isinstance(send_at, int)):
        return [error("The send_at must be a unix timestamp.", "send_at")]
    return []


def unverified_sender(
    body: Mapping[str, Any], verified_senders: Collection[str] | None
) -> dict[str, Any] | None:
    """SendGrid's 403 error when a sender is not a verified Sender Identity."""
    if verified_senders is None:
        return None
    senders = [body["from"]["email"]]
    senders += [
        p["from"]["email"] for p in body["personalizations"] if isinstance(p.get("from"), dict)
    ]
    if all(s.lower() in verified_senders for s in senders):
        return None
    return error(_UNVERIFIED_SENDER, "from", "message.from")
