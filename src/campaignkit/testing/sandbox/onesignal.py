"""A loopback fake of OneSignal's notifications API: :class:`OneSignalServer`."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Iterable
from typing import Any, ClassVar

from ._faults import Faults
from ._server import ProviderServer
from ._wire import Reply, Request

__all__ = ["OneSignalServer"]

NOTIFICATIONS_PATH = "/notifications"
#: The legacy path (``https://onesignal.com/api/v1/notifications``), also served.
LEGACY_NOTIFICATIONS_PATH = "/api/v1/notifications"
#: Most filter entries one request may carry.
MAX_FILTERS = 200
#: Most ids one request may target (OneSignal's SDK limit).
MAX_RECIPIENTS = 2000
NOT_SUBSCRIBED = "All included players are not subscribed"

#: targeting mode -> the body keys that belong to it
_TARGETING: dict[str, tuple[str, ...]] = {
    "include_subscription_ids": ("include_subscription_ids",),
    "include_aliases": ("include_aliases",),
    "include_player_ids": ("include_player_ids",),
    "segments": ("included_segments", "excluded_segments"),
    "filters": ("filters",),
}
#: the modes that name their recipients (the others reach an unknown number)
_BY_ID = ("include_subscription_ids", "include_aliases", "include_player_ids")
_AUTH_MISSING = (
    "Please include a case-sensitive header of Authorization: Key "
    "<YOUR-REST-API-KEY-HERE> with a valid REST API key."
)
_ACCESS_DENIED = (
    "Access denied.  Please include an 'Authorization: Key ...' header with a valid API key."
)


def _errors(status: int, *errors: str, headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"errors": list(errors)}, headers or {})


def _is_uuid(value: object) -> bool:
    """Whether ``value`` is a UUID in its canonical ``8-4-4-4-12`` hex form."""
    if not isinstance(value, str):
        return False
    try:
        return str(uuid.UUID(value)) == value.lower()
    except ValueError:
        return False


class OneSignalServer(ProviderServer):
    """Speaks OneSignal's ``POST /notifications`` on 127.0.0.1.

    Contract checked: ``Authorization: Key <token>``, or the legacy ``Basic <token>``
    (the scheme matched without case; missing or another scheme: 401, wrong key: 403,
    with OneSignal's ``{"errors": [...]}`` body); JSON content type; ``app_id`` equal
    to :attr:`app_id`; ``contents`` (unless ``template_id``, a UUID, is given), a
    language map of strings with English content; ``headings`` a language map of
    strings; exactly one targeting mode:

    * ``include_subscription_ids`` or the legacy ``include_player_ids``: UUIDs;
    * ``include_aliases`` ``{label: [ids]}`` (e.g. ``external_id``) with
      ``target_channel`` (``push``, ``email`` or ``sms``);
    * ``included_segments`` (segment names), optionally with ``excluded_segments``
      (which goes with ``included_segments`` only);
    * ``filters``: at most 200 objects, each ``{"field": ...}`` or ``{"operator":
      "OR"|"AND"}``;

    at most :attr:`max_recipients` ids; ``idempotency_key`` a UUID. Violations get
    400 ``{"errors": [...]}``. Both ``POST /notifications`` (the SDK's path, on
    ``https://api.onesignal.com``) and the legacy ``/api/v1/notifications`` are
    served; query parameters (``?c=push``) are ignored.

    Replies 200 ``{"id": <notification id>, "external_id": null}``. Ids in
    :attr:`unregistered` are reported at HTTP 200 in ``errors``:
    ``{"invalid_aliases": {label: [...]}}`` or ``{"invalid_player_ids": [...]}``;
    when none is valid the reply is ``{"id": "", "errors": ["All included players are
    not subscribed"]}`` and nothing is created. A segment or filter notification is
    accepted and recorded once, with its targeting: how many it reaches is unknown.

    Idempotency: a request whose ``idempotency_key`` was seen before gets the original
    reply again (as OneSignal documents, even if the body changed) and nothing new is
    recorded; :attr:`replays` counts those, :attr:`key_reuses` those whose body differed.

    Rate limiting answers 429 ``{"errors": ["API rate limit exceeded."]}`` with
    ``Retry-After``.

    Attributes:
        app_id: the app this server hosts (``channel_options()["app_id"]``).
        messages: one dict per delivered recipient: ``to``, ``id``
            (``"<notification id>:<to>"``, as the notifier reports it),
            ``notification_id``, ``title``, ``body``, ``data``, ``idempotency_key``,
            ``headings`` and ``contents`` (the language maps), ``template_id`` and
            ``targeting`` (the targeting keys of the request, and
            ``target_channel``); a segment or filter notification is one dict with
            ``to`` ``None`` and ``id`` the notification id.
        notifications: the accepted request bodies, one per notification created.
        unregistered: subscription ids / external ids that are not subscribed.
    """

    provider: ClassVar[str] = "onesignal"
    #: the app id the sandbox hosts unless another is given
    DEFAULT_APP_ID = "00000000-0000-4000-8000-0000000000a1"

    def __init__(
        self,
        *,
        token: str = ProviderServer.DEFAULT_TOKEN,
        port: int = 0,
        faults: Faults | None = None,
        app_id: str = DEFAULT_APP_ID,
        unregistered: Iterable[str] = (),
        max_recipients: int = MAX_RECIPIENTS,
    ) -> None:
        super().__init__(token=token, port=port, faults=faults)
        self.app_id = app_id
        self.unregistered: set[str] = set(unregistered)
        self.max_recipients = max_recipients
        self.messages: list[dict[str, Any]] = []
        self.notifications: list[dict[str, Any]] = []
        self.replays = 0
        self.key_reuses = 0
        self._by_key: dict[str, tuple[Any, Reply]] = {}

    def channel_options(self) -> dict[str, Any]:
        """The channel ``options`` that send to this server: ``base_url`` and ``app_id``."""
        return {"base_url": self.base_url, "app_id": self.app_id}

    def reset(self) -> None:
        """Forget recorded messages, requests and idempotency keys and clear the faults
        (keeps the settings)."""
        with self.lock:
            self.messages.clear()
            self.notifications.clear()
            self.request_times.clear()
            self._by_key.clear()
            self.replays = 0
            self.key_reuses = 0
            self.faults = Faults()

    # -- provider replies -------------------------------------------------------------
    def rate_limited_reply(self, retry_after: float) -> Reply:
        return _errors(429, "API rate limit exceeded.", headers={"Retry-After": f"{retry_after:g}"})

    def server_error_reply(self, status: int) -> Reply:
        if status == 401:
            return _errors(401, _AUTH_MISSING)
        if status == 403:
            return _errors(403, _ACCESS_DENIED)
        if status < 500:
            return _errors(status, "Bad request")
        return _errors(status, "Internal Server Error")

    def handle(self, request: Request) -> Reply:
        if request.path.rstrip("/") not in (NOTIFICATIONS_PATH, LEGACY_NOTIFICATIONS_PATH):
            return _errors(404, "Not Found")
        if request.method != "POST":
            return _errors(405, "Method Not Allowed")
        scheme, _, key = request.headers.get("authorization", "").strip().partition(" ")
        if scheme.lower() not in ("key", "basic") or not key.strip():
            return _errors(401, _AUTH_MISSING)
        if not hmac.compare_digest(key.strip().encode(), self.token.encode()):
            return _errors(403, _ACCESS_DENIED)
        if request.content_type != "application/json":
            return _errors(400, "Content-Type must be application/json")
        try:
            body = request.json()
        except ValueError:
            return _errors(400, "Invalid JSON in request body")
        if not isinstance(body, dict):
            return _errors(400, "The request body must be a JSON object")
        problem = self._validate(body)
        if problem:
            return _errors(400, problem)
        idem = body.get("idempotency_key")
        # One lock for lookup, processing and recording, so that concurrent requests
        # with one key create one notification.
        with self.lock:
            if idem is not None and idem in self._by_key:
                original, reply = self._by_key[idem]
                self.replays += 1
                if original != body:
                    self.key_reuses += 1
                return reply
            reply = self._create(body)
            if idem is not None:
                self._by_key[idem] = (body, reply)
        return reply

    def _validate(self, body: dict[str, Any]) -> str | None:
        if body.get("app_id") != self.app_id:
            return "app_id not found. You may be missing a Content-Type: application/json header."
        problem = _content_problem(body)
        if problem:
            return problem
        if body.get("data") is not None and not isinstance(body["data"], dict):
            return "data must be an object"
        modes = [mode for mode, keys in _TARGETING.items() if any(k in body for k in keys)]
        if not modes:
            return (
                "You must include which players, segments, or tags you wish to send "
                "this notification to."
            )
        if len(modes) > 1:
            return f"Please only use one targeting method; got {', '.join(modes)}"
        mode = modes[0]
        key = body.get("idempotency_key")
        if key is not None and not _is_uuid(key):
            return "idempotency_key must be a valid UUID"
        if mode == "segments":
            return _segments_problem(body)
        if mode == "filters":
            return _filters_problem(body.get("filters"))
        ids = self._targets(body)
        if ids is None:
            return f"{mode} is malformed"
        if not ids:
            return f"{mode} must not be empty"
        if len(ids) > self.max_recipients:
            return f"{mode} may hold at most {self.max_recipients} entries, got {len(ids)}"
        if mode in ("include_subscription_ids", "include_player_ids"):
            bad = next((i for i in ids if not _is_uuid(i)), None)
            if bad is not None:
                return f"Incorrect subscription_id format in {mode} (not a valid UUID): {bad}"
        elif body.get("target_channel") not in ("push", "email", "sms"):
            return "target_channel must be one of push, email, sms when using include_aliases"
        return None

    @staticmethod
    def _targets(body: dict[str, Any]) -> list[str] | None:
        """The targeted ids, or ``None`` if the targeting is malformed or not by id."""
        if "include_subscription_ids" in body:
            ids = body["include_subscription_ids"]
        elif "include_player_ids" in body:
            ids = body["include_player_ids"]
        elif "include_aliases" in body:
            aliases = body["include_aliases"]
            if not isinstance(aliases, dict) or len(aliases) != 1:
                return None
            (ids,) = aliases.values()
        else:
            return None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return None
        return list(ids)

    def _create(self, body: dict[str, Any]) -> Reply:
        """Create the notification (called with :attr:`lock` held)."""
        targeting = {k: body[k] for keys in _TARGETING.values() for k in keys if k in body}
        if "target_channel" in body:
            targeting["target_channel"] = body["target_channel"]
        common = {
            "title": (body.get("headings") or {}).get("en"),
            "body": (body.get("contents") or {}).get("en"),
            "data": body.get("data") or {},
            "idempotency_key": body.get("idempotency_key"),
            "headings": body.get("headings"),
            "contents": body.get("contents"),
            "template_id": body.get("template_id"),
            "targeting": targeting,
        }
        if not any(k in body for k in _BY_ID):  # segments or filters: reach unknown
            notification_id = str(uuid.uuid4())
            self.messages.append(
                {"to": None, "id": notification_id, "notification_id": notification_id, **common}
            )
            self.notifications.append(body)
            return Reply(200, {"id": notification_id, "external_id": None})
        ids = self._targets(body) or []
        invalid = [i for i in ids if i in self.unregistered]
        valid = [i for i in ids if i not in self.unregistered]
        if not valid:
            return Reply(200, {"id": "", "external_id": None, "errors": [NOT_SUBSCRIBED]})
        notification_id = str(uuid.uuid4())
        reply: dict[str, Any] = {"id": notification_id, "external_id": None}
        if invalid:
            if "include_aliases" in body:
                (label,) = body["include_aliases"]
                reply["errors"] = {"invalid_aliases": {label: invalid}}
            else:
                reply["errors"] = {"invalid_player_ids": invalid}
        self.messages.extend(
            {
                "to": to,
                "id": f"{notification_id}:{to}",
                "notification_id": notification_id,
                **common,
            }
            for to in dict.fromkeys(valid)  # one delivery per distinct id
        )
        self.notifications.append(body)
        return Reply(200, reply)


def _language_map_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        return f"Notification {name} for each language must be a string"
    return None


def _content_problem(body: dict[str, Any]) -> str | None:
    """What is wrong with ``contents``/``headings``/``template_id``, or ``None``."""
    template = body.get("template_id")
    if template is not None and not _is_uuid(template):
        return f"template_id {template!r} is not a valid UUID"
    contents = body.get("contents")
    if contents is None and template is None:
        return "Message Notifications must have English language content"
    if contents is not None:
        problem = _language_map_problem("contents", contents)
        if problem:
            return problem
        if not contents.get("en"):
            return "Message Notifications must have English language content"
    headings = body.get("headings")
    if headings is not None:
        return _language_map_problem("headings", headings)
    return None


def _names_problem(name: str, value: Any) -> str | None:
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        return f"{name} must be a non-empty array of segment names"
    return None


def _segments_problem(body: dict[str, Any]) -> str | None:
    if "included_segments" not in body:
        return "excluded_segments is only compatible with included_segments"
    problem = _names_problem("included_segments", body["included_segments"])
    if problem is None and "excluded_segments" in body:
        problem = _names_problem("excluded_segments", body["excluded_segments"])
    return problem


def _filters_problem(filters: Any) -> str | None:
    if not isinstance(filters, list) or not filters:
        return "filters must be a non-empty array of filter objects"
    if len(filters) > MAX_FILTERS:
        return f"filters may hold at most {MAX_FILTERS} entries, got {len(filters)}"
    for i, entry in enumerate(filters):
        if not isinstance(entry, dict):
            return f"filters[{i}] must be an object"
        if "operator" in entry:
            if entry["operator"] not in ("OR", "AND"):
                return f"filters[{i}].operator must be OR or AND"
        elif not isinstance(entry.get("field"), str):
            return f"filters[{i}] needs a field or an operator"
    return None
