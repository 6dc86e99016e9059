"""Stage paper: the profile's document built into paper/main.pdf.

The embedded profiles (tiny, smoke) get the study's paper, `paper/main.tex`, written around their
synthetic models and tasks; a profile of pretrained models (paper) gets `paper/pretrained.tex`, which
names no model or task and shows the tables and figures the report stages generated for it.
"""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig

from paramscope.errors import StudyError, guard

DOCUMENTS = ("main", "pretrained")


def latex_error(log: str) -> str:
    """The first error LaTeX reported ('! ...' and the line after it), in one line."""
    found = re.search(r"^! (.*)\n(.*)", log, flags=re.MULTILINE)
    return " ".join(found.groups()).strip() if found else "no LaTeX error line in the log"


@hydra.main(config_path="../conf", config_name="paper", version_base="1.3")
@guard
def main(cfg: DictConfig) -> None:
    name = cfg.paper_document
    if name not in DOCUMENTS:
        raise StudyError(f"unknown paper_document '{name}'; valid: {', '.join(DOCUMENTS)}")
    folder = Path(cfg.paths.paper)
    build_pdf(folder, name)


def build_pdf(folder: Path, name: str) -> None:
    """Build `folder/name.tex` into `folder/main.pdf` from nothing, in a fresh build folder.

    latexmk's state files from an earlier (failed) build would make it skip the build and re-read an
    old log, so every build starts empty; the PDF replaces main.pdf only once it is whole.
    """
    build = Path(tempfile.mkdtemp(prefix=".build-", dir=folder))
    try:
        # -jobname=main: either document becomes main.pdf, the stage's one output
        cmd = ["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "-jobname=main",
               f"-outdir={build.name}", f"{name}.tex"]
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, check=False)
        log = build / "main.log"
        for record in (log, build / "main.fls"):  # the log and the list of files read, kept beside the document
            if record.is_file():
                shutil.copyfile(record, folder / record.name)
        if proc.returncode != 0 or not (build / "main.pdf").is_file():
            text = log.read_text(errors="replace") if log.is_file() else proc.stdout
            raise StudyError(f"latexmk could not build {folder / name}.tex: {latex_error(text)} "
                             f"(see {folder}/main.log)")
        os.replace(build / "main.pdf", folder / "main.pdf")
    finally:
        shutil.rmtree(build, ignore_errors=True)


if __name__ == "__main__":
    main()
