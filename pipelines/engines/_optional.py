"""Optional dependencies, imported through one function that says how to install them."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, *, extra: str, purpose: str) -> ModuleType:
    """Import ``module``, or raise ``ImportError`` naming the extra that installs it.

    >>> import_optional("json", extra="spark", purpose="test").__name__
    'json'
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{purpose} needs the optional package {module.split('.')[0]!r}, which is not installed "
                          f"({error}); install it with: pip install 'portrait[{extra}]'") from error
