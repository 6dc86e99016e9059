"""Setup is complete by construction: what the code and the paper load is what setup installs.

A machine that ran an earlier, hand-made install can pass every other test while a fresh one fails
(a LaTeX package once went missing that way), so these tests derive the needs from the sources.
"""

import ast
import importlib.metadata
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PYTHON_SOURCES = ("src", "stages", "benchmarks", "scripts")
LATEX_LOADS = re.compile(r"\\(documentclass|usepackage|RequirePackage)\s*(?:\[[^\]]*\])?\s*\{([^}]*)\}")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def setup_debian_packages() -> list[str]:
    lines = (ROOT / "scripts" / "debian-packages.txt").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def latex_requirements() -> set[str]:
    """Every class and package file that a document under paper/ loads (comments stripped)."""
    files = set()
    for tex in (ROOT / "paper").rglob("*.tex"):
        text = re.sub(r"(?<!\\)%.*", "", tex.read_text())
        for command, names in LATEX_LOADS.findall(text):
            ext = ".cls" if command == "documentclass" else ".sty"
            files |= {n.strip() + ext for n in names.split(",") if n.strip()}
    return files


def _installed_depends(package: str) -> list[list[str]]:
    """The installed package's Depends and Pre-Depends, each as its alternatives (versions dropped)."""
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Depends}, ${Pre-Depends}", package], capture_output=True, text=True,
    ).stdout
    groups = [g for g in out.split(",") if g.strip()]
    return [[re.sub(r"[\s(:].*", "", alt.strip()) for alt in g.split("|")] for g in groups]


def _providers() -> dict[str, set[str]]:
    """Virtual package -> installed packages that provide it."""
    out = subprocess.run(["dpkg-query", "-W", "-f=${Package}\t${Provides}\n"], capture_output=True, text=True).stdout
    providers: dict[str, set[str]] = {}
    for line in out.splitlines():
        package, _, provides = line.partition("\t")
        for virtual in filter(None, (re.sub(r"[\s(:].*", "", p.strip()) for p in provides.split(","))):
            providers.setdefault(virtual, set()).add(package)
    return providers


def debian_closure(roots: list[str]) -> set[str]:
    """The packages setup installs and, recursively, everything they depend on."""
    providers, seen, todo = _providers(), set(), list(roots)
    while todo:
        package = todo.pop()
        if package in seen:
            continue
        seen.add(package)
        for alternatives in _installed_depends(package):
            for alt in alternatives:
                todo.extend([alt, *providers.get(alt, ())])
    return seen


def test_every_latex_file_paper_loads_comes_from_a_package_setup_installs():
    if shutil.which("kpsewhich") is None or shutil.which("dpkg") is None:
        pytest.fail("kpsewhich or dpkg not found: run scripts/setup.sh first (it installs LaTeX from Debian)")
    needed = latex_requirements()
    assert {"article.cls", "lmodern.sty", "hyperref.sty"} <= needed, "the paper's loads were not all found"
    closure = debian_closure(setup_debian_packages())
    problems = []
    for name in sorted(needed):
        path = subprocess.run(["kpsewhich", name], capture_output=True, text=True).stdout.strip()
        if not path:
            problems.append(f"{name}: not found by kpsewhich")
            continue
        owner = subprocess.run(["dpkg", "-S", str(Path(path).resolve())], capture_output=True, text=True)
        packages = {p.strip() for p in owner.stdout.split(":")[0].split(",")} if owner.returncode == 0 else set()
        if not packages & closure:
            problems.append(f"{name}: {path} belongs to {sorted(packages) or 'no Debian package'}, "
                            "which scripts/debian-packages.txt does not bring")
    assert not problems, "\n".join(problems)


def third_party_imports() -> dict[str, list[str]]:
    """Top-level module -> the files that import it, over the project's Python sources."""
    found: dict[str, list[str]] = {}
    local = {p.stem for p in (ROOT / "src").iterdir()} | {"paramscope"}
    for folder in PYTHON_SOURCES:
        for py in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(py.read_text(), filename=str(py))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in local:
                        found.setdefault(top, []).append(str(py.relative_to(ROOT)))
    return found


def declared_distributions() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements += extra
    return {_canonical(re.match(r"[A-Za-z0-9_.\-]+", r).group(0)) for r in requirements}


def test_every_third_party_import_is_a_declared_dependency():
    declared = declared_distributions()
    owners = importlib.metadata.packages_distributions()
    imports = third_party_imports()
    assert {"torch", "hydra", "lm_eval"} <= set(imports), "the import scan missed the study's core imports"
    problems = []
    for module, files in sorted(imports.items()):
        distributions = {_canonical(d) for d in owners.get(module, [])}
        if not distributions:
            problems.append(f"{module} (imported in {files[0]}) is not installed by any distribution")
        elif not distributions & declared:
            problems.append(f"{module} (imported in {files[0]}) comes from {sorted(distributions)}, "
                            "which pyproject.toml does not declare")
    assert not problems, "\n".join(problems)
