"""Test helpers that boot real Linux guests under QEMU (see tools/build_guest.py and harness.py).

``build_guest``, ``GuestImage`` and ``BuildError`` are re-exported from tools/build_guest.py, which is
loaded by path (tools/ is not a package).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

_BUILDER = Path(__file__).resolve().parents[2] / "tools" / "build_guest.py"


def _load_builder() -> ModuleType:
    name = "vmlan_build_guest"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, _BUILDER)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {_BUILDER}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the class is created
        spec.loader.exec_module(module)
    return module


_builder = _load_builder()
build_guest = _builder.build_guest
BuildError = _builder.BuildError
GuestImage = _builder.GuestImage
READY_MARKER: str = _builder.READY_MARKER

__all__ = ["READY_MARKER", "BuildError", "GuestImage", "build_guest"]
