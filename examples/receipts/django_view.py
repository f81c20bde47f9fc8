"""Delivery receipts in a Django project: one view that hands the request to the receiver.

In ``urls.py``::

    from django.urls import path
    from django_view import receipts

    urlpatterns = [path("hooks/receipts/<str:channel>", receipts)]

and set ``[receipts] public_url = "https://your.host/hooks"`` in the campaign (no
trailing slash on the route: Twilio signs the exact URL it calls). The campaign file
is ``settings.CAMPAIGNKIT_CAMPAIGN`` (default ``campaign.toml``).
"""

from __future__ import annotations

import functools

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from campaignkit.receipts import ReceiptReceiver, ReceiptRequest, receiver


@functools.cache
def _receiver() -> ReceiptReceiver:
    """One receiver per process, built on the first request (it opens the ledger)."""
    return receiver(getattr(settings, "CAMPAIGNKIT_CAMPAIGN", "campaign.toml"))


@csrf_exempt  # providers post without a CSRF token: the signature is the check
def receipts(request: HttpRequest, channel: str) -> HttpResponse:
    """``POST /hooks/receipts/<channel>``: verify, record, answer (never raises)."""
    answer = _receiver().handle(
        ReceiptRequest(
            method=request.method or "GET",
            path=f"/receipts/{channel}",
            headers=dict(request.headers),
            body=request.body,  # the raw bytes: the signatures cover them
            query=request.META.get("QUERY_STRING", ""),
        )
    )
    response = HttpResponse(answer.body, status=answer.status, content_type=answer.content_type)
    for name, value in answer.headers:
        response[name] = value
    return response
