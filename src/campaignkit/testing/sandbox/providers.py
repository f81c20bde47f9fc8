"""The built-in sandbox fakes, registered through ``campaignkit_register_sandbox_servers``
as any plugin registers its own (block them with
``--block-plugin campaignkit.testing.sandbox.providers``).

The servers are named as ``"module:Class"``: nothing is imported until a sandbox
starts one (so the SMTP server, which needs aiosmtpd, costs nothing unless used).
"""

# token_variable= names an environment variable, not a secret:
# ruff: noqa: S106

from __future__ import annotations

from collections.abc import Callable

from ...hookspecs import hookimpl
from ._fakes import Credential

__all__ = ["campaignkit_register_sandbox_servers"]

_HERE = "campaignkit.testing.sandbox"


@hookimpl
def campaignkit_register_sandbox_servers(register: Callable[..., None]) -> None:
    """Register the SendGrid, SMTP, Twilio, Telnyx, OneSignal and Expo fakes."""
    register(
        "sendgrid",
        f"{_HERE}.sendgrid:SendGridServer",
        credentials=(Credential("api_key", "SENDGRID_API_KEY", "token"),),
        token_variable="EMAIL_API_TOKEN",
    )
    register(
        "smtp",
        f"{_HERE}.smtp:SmtpServer",
        credentials=(
            Credential("host", "SMTP_HOST", "HOST"),
            Credential("port", "SMTP_PORT", "port"),
            Credential("username", "SMTP_USERNAME", "username"),
            Credential("password", "SMTP_PASSWORD", "token"),
        ),
        token_variable="EMAIL_API_TOKEN",
    )
    register(
        "twilio",
        f"{_HERE}.twilio:TwilioServer",
        credentials=(
            Credential("account_sid", "TWILIO_ACCOUNT_SID", "account_sid"),
            Credential("auth_token", "TWILIO_AUTH_TOKEN", "token"),
        ),
        token_variable="SMS_API_TOKEN",
        sender_keyword="from_numbers",
    )
    register(
        "telnyx",
        f"{_HERE}.telnyx:TelnyxServer",
        credentials=(Credential("api_key", "TELNYX_API_KEY", "token"),),
        token_variable="SMS_API_TOKEN",
        sender_keyword="from_numbers",
        sdk_base_url=("TELNYX_BASE_URL", "/v2"),
    )
    register(
        "onesignal",
        f"{_HERE}.onesignal:OneSignalServer",
        credentials=(
            Credential("app_id", "ONESIGNAL_APP_ID", "app_id"),
            Credential("rest_api_key", "ONESIGNAL_REST_API_KEY", "token"),
        ),
        token_variable="PUSH_API_TOKEN",
    )
    register(
        "expo",
        f"{_HERE}.expo:ExpoServer",
        credentials=(Credential("access_token", "EXPO_ACCESS_TOKEN", "token"),),
        token_variable="PUSH_API_TOKEN",
    )
