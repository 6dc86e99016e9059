"""Every module of the library, every stage, benchmark and script imports: a name removed from one
module but still imported by another fails here, not in the middle of a `dvc repro`."""

import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import paramscope

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted(m.name for m in pkgutil.walk_packages(paramscope.__path__, "paramscope."))
ENTRY_POINTS = sorted(p.relative_to(ROOT).as_posix() for folder in ("stages", "benchmarks", "scripts")
                      for p in (ROOT / folder).glob("*.py"))


@pytest.mark.parametrize("name", LIBRARY)
def test_library_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_entry_point_imports(path):
    spec = importlib.util.spec_from_file_location(f"entry_{Path(path).stem}", ROOT / path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)  # module level only: entry points run under `if __name__ == "__main__"`
    finally:
        del sys.modules[spec.name]


def test_the_lists_are_not_empty():
    assert len(LIBRARY) > 40 and any(p.startswith("stages/") for p in ENTRY_POINTS)
