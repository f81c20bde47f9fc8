"""Delivery receipts in a FastAPI (or Starlette) app: the receiver mounted at ``/hooks``.

Set ``[receipts] public_url = "https://your.host/hooks"`` in the campaign, then::

    CAMPAIGNKIT_CAMPAIGN=campaign.toml uvicorn --factory fastapi_app:create_app

The receipts app runs each request's ledger write in a worker thread, so the event
loop never waits for the database.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from campaignkit.receipts import asgi_app, receiver


def create_app(campaign: Any = None) -> FastAPI:
    """The FastAPI app, with the campaign's receipts below ``/hooks``."""
    campaign = campaign or Path(os.environ.get("CAMPAIGNKIT_CAMPAIGN", "campaign.toml"))
    app = FastAPI()

    @app.get("/")
    def index() -> dict[str, str]:
        return {"hello": "the rest of your app"}

    app.mount("/hooks", asgi_app(receiver(campaign)))
    return app
