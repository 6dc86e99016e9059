"""One look for every figure of the study, and PDFs that are the same bytes on every rebuild."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import seaborn as sns
from matplotlib.figure import Figure

from paramscope.report.output import write_bytes

PALETTE = "colorblind"
DIVERGING = "vlag_r"  # delta accuracy: harm (negative) in red, help (positive) in blue, 0 white
CORRELATION = "vlag"  # Spearman rho: positive red, negative blue
TEXT_WIDTH = 6.5  # inches: the text width of the paper, so figures are never rescaled
PDF_METADATA = {"CreationDate": None, "ModDate": None, "Creator": "paramscope"}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """The seaborn style every figure is drawn and saved under (changes nothing outside the block)."""
    rc = {
        **sns.axes_style("ticks"),
        **sns.plotting_context("paper", font_scale=0.9),
        "axes.prop_cycle": mpl.cycler(color=sns.color_palette(PALETTE)),
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.family": "DejaVu Sans",
        "legend.frameon": False,
        "pdf.fonttype": 42,  # TrueType: text stays text in the PDF
        "savefig.bbox": "tight",
        "savefig.pad_inches": 0.02,
        "svg.hashsalt": "paramscope",
        "figure.constrained_layout.use": True,
    }
    # seaborn draws strip-plot jitter from numpy's global generator: seed it for the block (and put
    # the caller's state back), so every figure is the same bytes on every rebuild
    state = np.random.get_state()
    np.random.seed(0)
    try:
        with mpl.rc_context(rc):
            yield
    finally:
        np.random.set_state(state)


def colors(names: Sequence[str]) -> dict[str, tuple]:
    """A fixed colour per name (model or task) in the given order, the same in every figure."""
    return dict(zip(names, sns.color_palette(PALETTE, len(names))))


def new_figure(width: float = TEXT_WIDTH, height: float = 2.5) -> Figure:
    """A figure outside pyplot's global state: nothing to close, nothing leaks between figures."""
    return Figure(figsize=(width, height))


def save_pdf(fig: Figure, path: Path) -> None:
    """A PDF without creation date, written atomically."""
    buf = io.BytesIO()
    fig.savefig(buf, format="pdf", metadata=PDF_METADATA)
    write_bytes(Path(path), buf.getvalue())
