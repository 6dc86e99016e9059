"""Result cells: a damaged cell is never trusted as finished, and reading one fails in one line."""

import logging

import pandas as pd
import pytest

from paramscope.errors import StudyError
from paramscope.store import CellGrid, RowSchema, cell_done, cell_key, cell_path, load_results, write_cell


def _cell(root, name: str):
    path = cell_path("ablate", name, root)
    write_cell(pd.DataFrame({"model": ["m"], "acc": [0.5], "ex_correct": [[1, 0]]}), path)
    return path


def test_a_cell_cut_short_is_not_finished_and_is_removed_with_a_warning(tmp_path, caplog):
    whole, cut = _cell(tmp_path, "whole"), _cell(tmp_path, "cut")
    cut.write_bytes(cut.read_bytes()[:100])
    assert cell_done(whole)
    with caplog.at_level(logging.WARNING, logger="paramscope.store"):
        assert not cell_done(cut)
    assert not cut.exists() and f"damaged result cell {cut}" in caplog.text
    assert not cell_done(cell_path("ablate", "never-written", tmp_path))


def test_reading_a_damaged_cell_is_one_clear_error(tmp_path):
    _cell(tmp_path, "whole")
    bad = _cell(tmp_path, "bad")
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(StudyError, match=f"damaged result cell {bad} .*rerun the stage that writes results/ablate"):
        load_results("ablate", tmp_path)


# ------------------------------------------------------------------------------------------ the cell grid

ROWS = RowSchema(3, {"model": "str", "acc": "float", "ex_correct": "list"})


def _rows(acc: float = 0.5) -> pd.DataFrame:
    return pd.DataFrame({"model": ["m"], "acc": [acc], "ex_correct": [[1, 0]]})


def test_a_planned_cell_keeps_the_key_the_stages_always_gave_it(tmp_path):
    cells = CellGrid("ablate", ROWS, tmp_path)
    cell = cells.plan("heads-zero-0-", digest="d", task="kv", split="dev")
    assert cell.name == "heads-zero-0-" + cell_key(stage="ablate", schema=3, digest="d", task="kv", split="dev")
    assert cell.path == cell_path("ablate", cell.name, tmp_path) and cells.planned == {cell.path}


def test_a_finished_cell_is_skipped_and_counted(tmp_path):
    first = CellGrid("ablate", ROWS, tmp_path)
    cell = first.plan(task="kv")
    assert not first.done(cell)
    first.write(cell, _rows())
    again = CellGrid("ablate", ROWS, tmp_path)
    assert again.done(again.plan(task="kv")) and again.existing(again.plan(task="kv")).acc.iloc[0] == 0.5
    assert first.counts == {"computed": 1, "skipped": 0} and again.counts == {"computed": 0, "skipped": 2}
    assert list(tmp_path.joinpath("ablate").iterdir()) == [cell.path]  # no temp file left behind


@pytest.mark.parametrize("damage, why", [
    (lambda p: p.write_bytes(p.read_bytes()[:100]), "Parquet"),  # cut short: no footer
    (lambda p: write_cell(pd.DataFrame({"other": [1]}), p), "missing columns model, acc, ex_correct"),
    (lambda p: write_cell(_rows().assign(acc="high"), p), "acc is"),  # a column of another type
])
def test_a_damaged_cell_is_recomputed_with_a_warning_naming_it(tmp_path, caplog, damage, why):
    cells = CellGrid("ablate", ROWS, tmp_path)
    cell = cells.plan(task="kv")
    cells.write(cell, _rows())
    damage(cell.path)
    with caplog.at_level(logging.WARNING, logger="paramscope.store"):
        assert not cells.done(cell)
    assert f"damaged result cell {cell.path}" in caplog.text and why in caplog.text
    assert not cell.path.exists()
    cells.write(cell, _rows())
    assert cells.done(cell) and cells.counts == {"computed": 2, "skipped": 1}


def test_a_cell_of_another_row_version_is_recomputed_and_pruned(tmp_path, caplog):
    versioned = RowSchema(3, {"model": "str"}, version_column="schema")
    cells = CellGrid("vps", versioned, tmp_path)
    old, mine = cells.plan(task="old"), cells.plan(task="new")
    write_cell(pd.DataFrame({"model": ["m"], "schema": [2]}), old.path)
    cells.write(mine, pd.DataFrame({"model": ["m"], "schema": [3]}))
    with caplog.at_level(logging.WARNING, logger="paramscope.store"):
        assert not cells.done(old)
    assert "row schema [2], not 3" in caplog.text
    write_cell(pd.DataFrame({"model": ["m"], "schema": [2]}), old.path)
    assert CellGrid("vps", versioned, tmp_path).prune_invalid() == 1
    assert not old.path.exists() and mine.path.exists()


def test_rows_that_do_not_match_the_schema_are_never_written(tmp_path):
    cells = CellGrid("ablate", ROWS, tmp_path)
    cell = cells.plan(task="kv")
    with pytest.raises(ValueError, match="does not match its row schema: missing columns ex_correct"):
        cells.write(cell, _rows().drop(columns="ex_correct"))
    assert not cell.path.exists() and cells.counts["computed"] == 0


def test_pruning_stays_within_the_jobs_scope(tmp_path):
    """A job removes its own unplanned cells and its own leftovers of killed writes; other jobs' cells and
    temp files (perhaps being written right now) are left alone."""
    old = CellGrid("ablate", ROWS, tmp_path)
    for prefix, task in (("heads-zero-0-", "gone"), ("heads-zero-0-", "kv"), ("heads-zero-0.5-", "gone")):
        old.write(old.plan(prefix, task=task), _rows())
    folder = tmp_path / "ablate"
    (folder / ".tmp-heads-zero-0-abc-x1.partial").write_bytes(b"")
    (folder / ".tmp-layers-zero-0-abc-x2.partial").write_bytes(b"")
    cells = CellGrid("ablate", ROWS, tmp_path)
    kept = cells.plan("heads-zero-0-", task="kv")
    assert cells.prune("heads-zero-0-*") == 2  # its unplanned cell and its temp file
    left = sorted(p.name for p in folder.iterdir())
    assert kept.path.name in left and ".tmp-layers-zero-0-abc-x2.partial" in left
    assert any(n.startswith("heads-zero-0.5-") for n in left) and len(left) == 3


def test_reading_a_cell_without_the_columns_a_reader_needs_is_one_clear_error(tmp_path):
    _cell(tmp_path, "whole")
    bad = cell_path("ablate", "bad", tmp_path)
    write_cell(pd.DataFrame({"other": [1]}), bad)
    assert len(load_results("ablate", tmp_path)) == 2  # nothing required: nothing checked
    wanted = RowSchema(1, {"model": "str", "acc": "float"})  # as the writer declares it
    with pytest.raises(StudyError, match=f"damaged result cell {bad} \\(missing columns model, acc\\); rerun"):
        load_results("ablate", tmp_path, schema=wanted)


def test_every_reader_of_a_stage_checks_the_rows_its_writer_declares():
    """Each `load_results` call in the library passes the writing stage's RowSchema, so a stale or foreign
    cell stops a report with one line instead of a KeyError deep in a table."""
    import ast
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src" / "paramscope"
    calls = [(path.relative_to(src).as_posix(), node) for path in src.rglob("*.py") if path.name != "store.py"
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_results"]
    assert len(calls) >= 8  # the atlas (eval, ablate), five topics and the profile search
    unchecked = [f"{name}:{node.lineno}" for name, node in calls if "schema" not in {k.arg for k in node.keywords}]
    assert unchecked == []
