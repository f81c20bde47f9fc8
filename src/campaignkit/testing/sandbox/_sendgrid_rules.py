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

    Args:
        is_invalid: whether SendGrid refuses a recipient address.
        max_substitution_bytes: the most bytes of substitutions per personalization.
        templates: the template ids that exist (``None``: any well-formed id).
    """
    errors: list[dict[str, Any]] = []
    sender = body.get("from")
    if not isinstance(sender, dict) or not isinstance(sender.get("email"), str):
        errors.append(error(_FROM_REQUIRED, "from", "message.from"))
    elif not EMAIL.fullmatch(sender["email"]):
        errors.append(error(_INVALID_ADDRESS, "from.email", "message.from"))
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        errors.append(
            error(
                "You must have at least one personalization.",
                "personalizations",
                "message.personalizations",
            )
        )
        personalizations = []
    elif len(personalizations) > 1000:
        errors.append(
            error(
                "The personalization block is limited to 1000 personalizations per API "
                f"request. You have provided {len(personalizations)} personalizations. "
                "Please consider splitting this into multiple requests and resending "
                "your request.",
                "personalizations",
                "message.personalizations",
            )
        )
        return errors
    subject_missing = False
    seen: set[str] = set()
    recipients = 0
    for i, p in enumerate(personalizations):
        where = f"personalizations.{i}"
        if not isinstance(p, dict):
            errors.append(error("Bad Request", where, "message.personalizations"))
            continue
        to = p.get("to")
        if not isinstance(to, list) or not to:
            errors.append(error(_TO_REQUIRED, f"{where}.to", "message.personalizations.to"))
            to = []
        for kind in ("to", "cc", "bcc"):
            entries = to if kind == "to" else p.get(kind) or []
            for j, entry in enumerate(entries if isinstance(entries, list) else []):
                recipients += 1
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
        if not (isinstance(p.get("subject"), str) and p["subject"]):
            subject_missing = True
        errors += _validate_personalization_extras(p, where)
        substitutions = p.get("substitutions") or {}
        if not isinstance(substitutions, dict) or not all(
            isinstance(v, str) for v in substitutions.values()
        ):
            errors.append(
                error(
                    "Substitutions must be strings.",
                    f"{where}.substitutions",
                    "message.personalizations.substitutions",
                )
            )
        elif (
            sum(len(k.encode()) + len(v.encode()) for k, v in substitutions.items())
            > max_substitution_bytes
        ):
            errors.append(
                error(
                    "The substitutions in a personalization may not exceed "
                    f"{max_substitution_bytes} bytes.",
                    f"{where}.substitutions",
                    "message.personalizations.substitutions",
                )
            )
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
    top_subject = body.get("subject")
    templated = "template_id" in body
    if subject_missing and not templated and not (isinstance(top_subject, str) and top_subject):
        errors.append(error(_SUBJECT_REQUIRED, "subject", "message.subject"))
    if templated:
        errors += _validate_template(body["template_id"], templates)
        if body.get("content"):
            errors += _validate_content(body["content"])
    else:
        errors += _validate_content(body.get("content"))
    errors += _validate_extras(body)
    return errors


def _validate_template(template_id: Any, templates: Collection[str] | None) -> list[dict[str, Any]]:
    if not isinstance(template_id, str) or not _TEMPLATE_ID.fullmatch(template_id):
        message = _TEMPLATE_INVALID.format(template_id)
    elif templates is not None and template_id not in templates:
        message = _TEMPLATE_UNKNOWN.format(template_id)
    else:
        return []
    return [error(message, "template_id", "message.template_id")]


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


def _validate_content(content: Any) -> list[dict[str, Any]]:
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


def _validate_personalization_extras(p: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
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


def _validate_extras(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Top-level ``categories``, ``custom_args``, ``asm`` and ``send_at``."""
    errors = []
    categories = body.get("categories")
    if categories is not None:
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            errors.append(error("Categories must be strings.", "categories", "message.categories"))
        elif len(categories) > 10:
            errors.append(
                error("You may not have more than 10 categories per request.", "categories")
            )
        elif any(len(c) > 255 for c in categories):
            errors.append(error("A category cannot be longer than 255 characters.", "categories"))
    custom_args = body.get("custom_args")
    if custom_args is not None and (
        not isinstance(custom_args, dict)
        or not all(isinstance(v, str) for v in custom_args.values())
    ):
        errors.append(error("The custom_args values must be strings.", "custom_args"))
    asm = body.get("asm")
    if asm is not None:
        group = asm.get("group_id") if isinstance(asm, dict) else None
        if isinstance(group, bool) or not isinstance(group, int):
            errors.append(
                error("The asm.group_id must be an integer.", "asm.group_id", "message.asm")
            )
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
    send_at = body.get("send_at")
    if send_at is not None and (isinstance(send_at, bool) or not isinstance(send_at, int)):
        errors.append(error("The send_at must be a unix timestamp.", "send_at"))
    return errors
