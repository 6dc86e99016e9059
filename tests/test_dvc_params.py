"""DVC params: each stage declares the conf keys it reads, so an edited key reruns the stages that read it and
what follows them, nothing else, and `dvc params diff` names the key."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, clean_checkout

CONF = ROOT / "conf"
PROFILES = sorted(p.stem for p in (CONF / "profile").glob("*.yaml"))
GIT = "git -c user.name=paramscope -c user.email=dev@paramscope"
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def sh(cmd: str, cwd: Path) -> str:
    proc = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def conf_params(stage: dict) -> dict[str, list[str] | None]:
    """conf file -> the keys the stage declares from it (None: the whole file)."""
    return {f: keys for p in stage["params"] if isinstance(p, dict) for f, keys in p.items()}


def composed(stage: dict) -> tuple[list[str], list[str]]:
    """The stage's own conf files (its script's file and the files that one's defaults name), every profile, and
    the group files its defaults pick (the logger only logs and declares nothing)."""
    cmd = stage["cmd"] if isinstance(stage["cmd"], str) else stage["cmd"][0]
    todo, own, groups = [re.search(r"stages/(\w+)\.py", cmd).group(1)], [], []
    while todo:
        name = todo.pop(0)
        own.append(f"conf/{name}.yaml")
        for entry in yaml.safe_load((CONF / f"{name}.yaml").read_text()).get("defaults", []):
            if isinstance(entry, str) and entry != "_self_":
                todo.append(entry)
            elif isinstance(entry, dict):
                groups += [f"conf/{g}/{c}.yaml" for g, c in entry.items() if g not in ("profile", "logger")]
    return own + [f"conf/profile/{p}.yaml" for p in PROFILES], groups


def find(data: dict, path: str) -> tuple[bool, object]:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return False, None
        data = data[part]
    return True, data


def required(data: dict, paths: set[str]) -> set[str]:
    """The declared paths a file sets; where it sets a prefix of one to a non-mapping (`train: null`), the prefix."""
    found = set()
    for path in paths:
        parts = path.split(".")
        for i in range(1, len(parts) + 1):
            there, value = find(data, ".".join(parts[:i]))
            if there and (i == len(parts) or not isinstance(value, dict)):
                found.add(".".join(parts[:i]))
                break
    return found


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_declares_what_it_reads_in_every_file_that_sets_it(name):
    """A key a stage declares from one file is declared from each file of its config that sets it (a profile
    that later sets `vps:` cannot go unnoticed), every key of its own stage file is declared, an interpolation
    in a declared value points at a declared key, and no conf file is depended on as a whole folder."""
    stage = STAGES[name]
    declared = conf_params(stage)
    files, groups = composed(stage)
    assert "conf" not in stage.get("deps", []), "depend on the keys read, not on the conf folder"
    assert set(declared) <= set(files + groups), set(declared) - set(files + groups)
    for group in groups:
        assert declared.get(group, "missing") is None, f"{group}: declare the whole file"
    keys = {k for f in files for k in declared.get(f) or []}
    for f in files:
        data = yaml.safe_load((ROOT / f).read_text()) or {}
        assert set(declared.get(f) or []) == required(data, keys), f
    stage_file = files[0]
    top = set(yaml.safe_load((ROOT / stage_file).read_text()))
    assert top <= set(declared[stage_file]), f"{stage_file}: undeclared {top - set(declared[stage_file])}"
    tops = {k.split(".")[0] for k in keys}
    for f in files:
        data = yaml.safe_load((ROOT / f).read_text()) or {}
        for key in declared.get(f) or []:
            refs = re.findall(r"\$\{([a-z_][\w.]*)\}", json.dumps(find(data, key)[1]))
            assert {r.split(".")[0] for r in refs} <= tops, f"{f}: {key} interpolates {refs}"


def test_grid_axes_of_params_yaml_are_declared_where_commands_use_them():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, stage in STAGES.items():
        cmds = " ".join([stage["cmd"]] if isinstance(stage["cmd"], str) else stage["cmd"])
        used = set(re.findall(r"\$\{([\w.]+)\}", cmds))
        assert used <= {p for p in stage["params"] if isinstance(p, str)}, name
        assert all(find(params, u)[0] for u in used), name


def placeholder_outputs(repo: Path) -> None:
    """A small file at every output path (a folder gets one file in it)."""
    for name, stage in STAGES.items():
        for entry in stage.get("outs", []) + stage.get("metrics", []):
            path = repo / (entry if isinstance(entry, str) else next(iter(entry)))
            target = path if path.suffix else path / "placeholder"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text("{}" if path.suffix == ".json" else f"{name}\n")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A clean checkout with every stage recorded as up to date, committed.

    The outputs are placeholders recorded with `dvc commit`, not computed: which stages DVC finds changed
    depends only on the deps and params in dvc.lock, and `dvc commit` records those as they are now, as a
    finished run would (test_pipeline's second `dvc repro` checks a real run's lock). The declarations name
    every profile file whichever profile params.yaml names, so the default profile stands for all of them."""
    repo = clean_checkout(tmp_path_factory.mktemp("params") / "repo")
    placeholder_outputs(repo)
    sh(f"git init -q && dvc commit -f -q && {GIT} add -A && {GIT} commit -qm recorded", repo)
    assert "Data and pipelines are up to date" in sh("dvc status", repo)
    return repo


def edited(repo: Path, rel: str, old: str, new: str) -> tuple[set[str], set[str], dict]:
    """Apply one edit, then: the stages `dvc status` finds changed, the stages `dvc repro --dry
    --force-downstream` would run, and `dvc params diff`; the file is restored afterwards.

    A dry run changes no output, so downstream stages still see their recorded inputs and a plain `--dry`
    lists only the changed stages (what `dvc status` says). `--force-downstream` adds everything that
    depends on them, which is what a real `dvc repro` runs once their outputs change."""
    path = repo / rel
    original = path.read_text()
    assert original.count(old) == 1, f"{old!r} is not one line of {rel}"
    path.write_text(original.replace(old, new))
    try:
        changed = set(json.loads(sh("dvc status --json", repo)))
        dry = sh("dvc repro --dry --force-downstream", repo)
        diff = json.loads(sh("dvc params diff --json", repo))
    finally:
        path.write_text(original)
    ran = set(re.findall(r"^Running stage '([\w-]+)'", dry, flags=re.MULTILINE))
    return changed, ran, diff


def downstream(start: str) -> set[str]:
    """`start` and every stage that depends on one of its outputs, transitively, from dvc.yaml alone."""
    outs = {n: {e if isinstance(e, str) else next(iter(e)) for e in s.get("outs", []) + s.get("metrics", [])}
            for n, s in STAGES.items()}
    found, todo = {start}, [start]
    while todo:
        made = outs[todo.pop()]
        for name, stage in STAGES.items():
            if name not in found and made & set(stage.get("deps", [])):
                found.add(name)
                todo.append(name)
    return found


@pytest.mark.parametrize("rel, old, new, key", [
    ("conf/vps.yaml", "rank: [2, 8]", "rank: [2, 4]", "rank"),
    ("conf/profile/smoke.yaml", "gamma: [0.3]", "gamma: [0.5]", "gamma"),  # a profile's override of a vps key
], ids=["stage-file", "profile"])
def test_a_vps_key_reruns_vps_and_what_follows_only(recorded, rel, old, new, key):
    changed, ran, diff = edited(recorded, rel, old, new)
    assert changed == {"vps"}
    assert ran == {"vps", "report-vps", "paper"} == downstream("vps")
    assert list(diff) == [rel] and list(diff[rel]) == [key]
    assert (diff[rel][key]["old"], diff[rel][key]["new"]) == (old.split(": ")[1], new.split(": ")[1])


def test_a_training_key_reruns_everything_from_train_on(recorded):
    changed, ran, diff = edited(recorded, "conf/profile/tiny.yaml", "  lr: 2.0e-3", "  lr: 1.0e-3")
    assert changed == {"train"}
    assert ran == downstream("train") == set(STAGES) - {"prepare", "baselines"}
    assert list(diff) == ["conf/profile/tiny.yaml"] and list(diff["conf/profile/tiny.yaml"]) == ["train.lr"]
    assert diff["conf/profile/tiny.yaml"]["train.lr"]["new"] == 0.001


def test_reformatting_a_conf_file_reruns_nothing(recorded):
    """Reformatting a file without changing a value is no change (DVC compares values, not bytes)."""
    changed, ran, diff = edited(recorded, "conf/vps.yaml", "rank: [2, 8]", "rank:  [2,  8]")
    assert changed == set() and ran == set() and diff == {}


# ------------------------------------------------------------------------- code dependencies


def _paramscope_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The library modules a file imports (inside functions too), with the packages they sit in."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "paramscope":
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    return {".".join(m.split(".")[:i]) for m in found for i in range(1, m.count(".") + 2)} & modules.keys()


@pytest.mark.parametrize("name", sorted(STAGES))
def test_a_stage_depends_on_every_library_module_it_imports(name):
    """A change to any module a stage's script imports, directly or through others, reruns the stage: its
    deps cover every file of that import closure (a report topic loaded by name counts as imported)."""
    src = ROOT / "src"
    modules = {".".join(p.relative_to(src).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (src / "paramscope").rglob("*.py")}
    stage = STAGES[name]
    cmd = stage["cmd"] if isinstance(stage["cmd"], str) else " ".join(stage["cmd"])
    todo = [*_paramscope_imports(ROOT / re.search(r"stages/\w+\.py", cmd).group(0), modules),
            *(f"paramscope.report.{topic}" for topic in re.findall(r"topic=(\w+)", cmd))]
    closure: set[str] = set()
    while todo:
        module = todo.pop()
        if module not in closure:
            closure.add(module)
            todo += _paramscope_imports(modules[module], modules)
    deps = [d.rstrip("/") for d in stage.get("deps", [])]
    files = sorted(modules[m].relative_to(ROOT).as_posix() for m in closure)
    uncovered = [f for f in files if not any(f == d or f.startswith(d + "/") for d in deps)]
    assert len(files) > 1 and uncovered == []
