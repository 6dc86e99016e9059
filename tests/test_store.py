"""Result cells: a damaged cell is never trusted as finished, and reading one fails in one line."""

import logging

import pandas as pd
import pytest

from paramscope.errors import StudyError
from paramscope.store import cell_done, cell_path, load_results, write_cell


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
