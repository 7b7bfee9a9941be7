"""Rendering any benchmark page again from its store alone (`cmkd report PAGE`): the store's
`kind` names the renderer, and where the page has plots they are drawn again when what they
need is on disk (kept as they are otherwise)."""

from __future__ import annotations

from pathlib import Path

from cmkd.bench.compare import render_compare_page
from cmkd.bench.discomkd.page import render_discomkd
from cmkd.bench.pagestore import Render, publish, read_store, store_path
from cmkd.bench.perf.page import render as render_perf
from cmkd.bench.report.page import draw_grid_plots, render_grid_page, write_report
from cmkd.bench.softcmkd import draw_softcmkd_plot, render_softcmkd
from cmkd.bench.teacher_cache import render_teacher_cache
from cmkd.errors import CmkdError

RENDERERS: dict[str, Render] = {
    "grid": render_grid_page,
    "compare": render_compare_page,
    "softcmkd": render_softcmkd,
    "discomkd": render_discomkd,
    "perf": render_perf,
    "teacher_cache": render_teacher_cache,
}
PLOTTERS = {"grid": draw_grid_plots, "softcmkd": draw_softcmkd_plot}


def render(store: dict, page: Path) -> str:
    """The Markdown of a page store, by its kind."""
    kind = store["kind"]
    if kind not in RENDERERS:
        raise CmkdError(f"unknown page kind {kind!r}; known: {sorted(RENDERERS)}")
    return RENDERERS[kind](store, page)


def rewrite(store_file: str | Path, page: str | Path, plots: bool = True, echo=print) -> Path:
    """Render the page of a store (a .json, or the page it sits beside) to `page`, with the
    store copied beside it where that is elsewhere, and its plots."""
    store = read_store(store_file)
    page = publish(page, store, render)
    if plots and store["kind"] in PLOTTERS:
        PLOTTERS[store["kind"]](store, page, echo)
    return page


def report(source: str | Path, page: str | Path | None = None, plots: bool = True) -> Path:
    """A grid's run folder (cells/): its compact store and page, default <folder>/<name>.md.
    A page (.md) or its store (.json): the page again from the store, default in place."""
    source = Path(source)
    if source.is_dir():
        return write_report(source, page, plots)
    if source.suffix in (".md", ".json") and store_path(source).is_file():
        return rewrite(source, page or source.with_suffix(".md"), plots)
    raise CmkdError(
        f"no results store under {source} (give a grid's run folder, or a page or its .json)"
    )
