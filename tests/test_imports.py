"""Every module of the library, every stage, benchmark and script imports: a name removed from one
module but still imported by another fails here, not in the middle of a `dvc repro`."""

import importlib
import importlib.util
import pkgutil
import re
import sys
from pathlib import Path

import pytest

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


# ---------------------------------------------------------------------------------- the import graph


def _library_imports() -> dict[str, list[tuple[str, tuple[str, ...]]]]:
    """module -> [(imported paramscope module, names imported from it)], imports inside functions included:
    a cycle broken only by a function-level import is still a cycle."""
    import ast

    src = ROOT / "src"
    modules = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (src / "paramscope").rglob("*.py")}
    edges: dict[str, list[tuple[str, tuple[str, ...]]]] = {m: [] for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "paramscope":
                for alias in node.names:  # `from paramscope.x import y` imports module x.y where y is one
                    target = f"{node.module}.{alias.name}"
                    edges[name].append((target, ()) if target in modules else (node.module, (alias.name,)))
            elif isinstance(node, ast.Import):
                edges[name] += [(a.name, ()) for a in node.names if a.name.split(".")[0] == "paramscope"]
    return edges


def test_the_library_imports_no_module_in_a_circle():
    from graphlib import CycleError, TopologicalSorter

    graph = {m: {t for t, _ in targets if t != m} for m, targets in _library_imports().items()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


def test_no_private_name_is_imported_from_another_module():
    private = sorted(f"{m} imports {n} from {t}" for m, targets in _library_imports().items()
                     for t, names in targets for n in names if n.startswith("_"))
    assert private == []


def test_the_evaluation_types_import_nothing_from_the_package():
    assert _library_imports()["paramscope.evaluation.documents"] == []


def test_the_code_is_ruff_clean():
    import shutil
    import subprocess

    ruff = shutil.which("ruff")
    assert ruff, "ruff is a test dependency (pip install -e '.[test]')"
    proc = subprocess.run([ruff, "check", "src", "stages", "tests", "benchmarks", "scripts"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:]


def test_tests_share_helpers_through_the_helpers_package_not_conftest():
    pattern = re.compile(r"^\s*(from conftest import|import conftest)", re.M)
    importers = sorted(p.name for p in (ROOT / "tests").rglob("*.py") if pattern.search(p.read_text()))
    assert importers == []
