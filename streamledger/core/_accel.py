"""The optional native accelerator of the hot paths, or None.

``native`` is the compiled ``streamledger._native`` module (Rust, ``native/`` in the source
tree, built by ``pip install`` when cargo is available) or ``None``: without it every caller
runs its pure-Python code, which is the reference the native code is tested against
(``tests/core/test_native.py``). Callers read ``_accel.native`` at call time, so setting it
to ``None`` switches the accelerator off in a running process.

``STREAMLEDGER_PURE_PYTHON=1`` in the environment forces the pure-Python code.
"""

from __future__ import annotations

import os
from types import ModuleType

#: The ABI of ``native/src/lib.rs`` this code expects; a stale build is ignored.
ABI = 3


def load() -> ModuleType | None:
    """The native module if it is built, current and not switched off, else None."""
    if os.environ.get("STREAMLEDGER_PURE_PYTHON", "").strip() not in ("", "0"):
        return None
    try:
        from streamledger import _native  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _native if getattr(_native, "ABI", None) == ABI else None


native: ModuleType | None = load()
