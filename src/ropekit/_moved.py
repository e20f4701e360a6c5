"""Module paths that moved, kept working.

``import ropekit.train`` (or ``from ropekit.train import train``) gives the module that now owns those names,
``ropekit.training.api``: the very same module object, not a copy, so reading or setting an attribute through the
old name reads or sets it on the owner. New code imports the new paths; these stay for code and documentation
written against the old ones. ``ropekit/__init__.py`` installs the finder on import.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

MOVED = {
    "ropekit.train": "ropekit.training.api",
    **{f"ropekit.{name}": f"ropekit.training.{name}"
       for name in ("data", "positions", "synthetic", "selection", "merge", "memory", "parallel", "longrecipe")},
    **{f"ropekit.{name}": f"ropekit.studies.{name}" for name in ("compare", "study", "report", "lab")},
    "ropekit.attention": "ropekit.methods.runtime",
    "ropekit.entropy": "ropekit.methods.entropy_probe",
    "ropekit.longlora": "ropekit.methods.s2_attention",  # the S²-Attn attention sits with the methods the runtime calls
}


class _OldPath(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass  # the owner ran its own code when it was imported


def install() -> None:
    if not any(isinstance(finder, _OldPath) for finder in sys.meta_path):
        sys.meta_path.insert(0, _OldPath())
