"""Matplotlib figures for the benchmark pages, saved atomically (a killed report never leaves
half an image)."""

from __future__ import annotations

from pathlib import Path

from cmkd.io import atomic_path

DPI = 100


def figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (6, 3.5)):
    """(pyplot, figure, 2-d array of axes) on the non-interactive backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(nrows, ncols, figsize=size, squeeze=False)
    return plt, fig, axes


def save_figure(fig, path: Path, dpi: int = DPI) -> None:
    """Lay out, save (temp file, then rename) and close a figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    # bbox "tight" grows the canvas to what is drawn: a title or axis label wider than its
    # axes (long row labels squeeze them) is otherwise cut at the figure's edge.
    with atomic_path(path, suffix=Path(path).suffix) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")
    plt.close(fig)
