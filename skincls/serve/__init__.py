"""Serve: a local web page and JSON API to classify uploaded images (`pip install 'skincls[serve]'`).

`ModelService` (the model, a lock, decisions and Grad-CAM) needs no web framework; `create_app`
wraps it in a Starlette app, which `skincls serve` runs with uvicorn.
"""

from .._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__)  # `skincls.serve.X` imports the submodule X on first use
