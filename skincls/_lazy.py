"""Lazy package attributes (PEP 562): public names and submodules are imported on first use."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, names: Mapping[str, str] | None = None) -> Callable[[str], Any]:
    """A module `__getattr__` for `package` that imports what is asked for, once.

    Args:
        package: The package's `__name__`.
        names: Public name → the module defining it, relative to `package` (".data.fetch").
            Any other name is looked up as a submodule, so `skincls.data.dataset` works after a bare
            `import skincls`, as it did when the package imported everything eagerly.
    """
    names = dict(names or {})

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name], package), name)
            setattr(sys.modules[package], name, value)  # the next lookup does not come here
            return value
        if not name.startswith("__"):  # dunder probes (copy, pickle, doctest) are never modules
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as exc:
                if (
                    exc.name != f"{package}.{name}"
                ):  # the submodule exists but needs a missing package
                    raise
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
