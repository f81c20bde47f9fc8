"""Integrations with other tools, each behind its extra: :mod:`.dask` (``campaignkit[dask]``)."""
