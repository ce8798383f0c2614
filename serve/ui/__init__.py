"""The operator's view at `/ui`: a live partition map and headline numbers.

`serve/app.py` includes `router`; everything else (auth, the JSON endpoint, the static page)
lives in this package so the allocator's routes stay where they are.
"""

from serve.ui.routes import router

__all__ = ["router"]
