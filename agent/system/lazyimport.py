"""Defer a standard-library module's import until it is first used.

paho's client module imports ``urllib.request`` for one call, ``getproxies()``, which it makes
only when PySocks is installed. ``urllib.request`` pulls in ``http.client`` and the ``email``
package: ~1.2 MiB of the idle agent's RSS, for code it never runs.

:func:`defer` puts a stand-in module in ``sys.modules``; ``import urllib.request`` then binds
the stand-in without running the module, and the first attribute read on it (``getproxies``,
or a ``from urllib.request import x``) imports the real module, which replaces the stand-in
from then on. ``importlib.util.LazyLoader`` cannot do this on Python 3.11: the ``import``
statement itself reads ``__spec__._initializing`` of a module found in ``sys.modules``, which
loads a lazy module at once.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from importlib.machinery import ModuleSpec
from typing import Any

_lock = threading.Lock()


class _Deferred(types.ModuleType):
    """Stands in for a module not imported yet; imports it on the first attribute read."""

    def __init__(self, spec: ModuleSpec) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec  # an attribute of its own: reading it loads nothing

    def __getattr__(self, attr: str) -> Any:
        if attr == "__path__":  # the import system asks whether this is a package: it is not
            raise AttributeError(attr)
        return getattr(_load(self), attr)


def _load(stub: _Deferred) -> types.ModuleType:
    name = stub.__name__
    with _lock:
        module = sys.modules.get(name)
        if module is stub or module is None:
            sys.modules.pop(name, None)
            module = importlib.import_module(name)  # also rebinds the parent's attribute
    return module


def defer(name: str) -> bool:
    """Import ``name`` on its first use instead of now. True if deferred; False if it is
    imported already or cannot be found (nothing changes then)."""
    if name in sys.modules:
        return False
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is not None:
        return False  # not found, or a package (submodule imports would need the real one)
    stub = _Deferred(spec)
    sys.modules[name] = stub
    parent, _, child = name.rpartition(".")
    if parent:  # what the import system does for a submodule it imports itself
        setattr(sys.modules[parent], child, stub)
    return True
