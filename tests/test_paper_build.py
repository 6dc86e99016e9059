"""The paper stage builds from a clean state: a failed build's leftovers never answer a fixed one."""

import importlib.util
import shutil
from pathlib import Path

import pytest

from paramscope.errors import StudyError

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("paper_stage", ROOT / "stages" / "paper.py")
paper_stage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(paper_stage)

DOCUMENT = r"""\documentclass{article}
\begin{document}
\input{body}
\end{document}
"""

pytestmark = pytest.mark.skipif(shutil.which("latexmk") is None, reason="latexmk not installed (scripts/setup.sh)")


def test_a_fixed_document_builds_after_a_failed_build(tmp_path):
    (tmp_path / "main.tex").write_text(DOCUMENT)
    with pytest.raises(StudyError, match="body"):  # body.tex is missing: LaTeX names it
        paper_stage.build_pdf(tmp_path, "main")
    assert not (tmp_path / "main.pdf").exists(), "a failed build must not leave a PDF behind"
    assert "body" in (tmp_path / "main.log").read_text(errors="replace")
    # What latexmk run in place leaves after a failure: the state that once made it skip the next build.
    for leftover in ("main.fdb_latexmk", "main.aux", "main.fls"):
        (tmp_path / leftover).write_text("stale\n")
    (tmp_path / "body.tex").write_text("Fixed.\n")
    paper_stage.build_pdf(tmp_path, "main")
    assert (tmp_path / "main.pdf").read_bytes().startswith(b"%PDF")
    assert "body.tex" in (tmp_path / "main.fls").read_text(), "the record of files read is kept"
    assert not list(tmp_path.glob(".build-*")), "the build folder is removed"
