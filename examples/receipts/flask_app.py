"""Delivery receipts in a Flask app: the receiver mounted at ``/hooks``.

Set ``[receipts] public_url = "https://your.host/hooks"`` in the campaign, then::

    CAMPAIGNKIT_CAMPAIGN=campaign.toml flask --app flask_app:create_app run

Providers post to ``https://your.host/hooks/receipts/<channel>``; the rest of the
app is untouched (werkzeug's ``DispatcherMiddleware`` routes by path prefix).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.dispatcher import DispatcherMiddleware

from campaignkit.receipts import receiver, wsgi_app


def create_app(campaign: Any = None) -> Flask:
    """The Flask app, with the campaign's receipts below ``/hooks``."""
    campaign = campaign or Path(os.environ.get("CAMPAIGNKIT_CAMPAIGN", "campaign.toml"))
    app = Flask(__name__)

    @app.get("/")
    def index() -> str:
        return "the rest of your app"

    rx = receiver(campaign)  # reads the keys and tokens now: a missing one fails here
    app.wsgi_app = DispatcherMiddleware(app.wsgi_app, {"/hooks": wsgi_app(rx)})  # type: ignore[method-assign]
    return app
