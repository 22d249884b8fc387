"""Writing `dplbench report`: its Markdown and figures (results/report.py builds the tables)
into a report folder (results/root.py `ReportFiles`: R/reports/<suite>/, or --out)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from dplbench import storage
from dplbench.results.aggregate import Row
from dplbench.results.report import SECTIONS, report_tables, sections_markdown
from dplbench.results.root import ReportFiles, ResultsRoot
from dplbench.results.samples import Outcomes, load_outcomes


@dataclass(frozen=True)
class RenderedReport:
    markdown: str  # path or URI of report.md
    plots: tuple[str, ...]
    text: str  # the Markdown itself


def render_report(
    rows: Any,
    out: ReportFiles,
    suite: str | None = None,
    compare: bool = True,
    refs: Mapping[str, list[Row]] | None = None,
    bench: Sequence[Row] = (),
    epochs: Sequence[Row] = (),
    outcomes: Outcomes | None = None,
    baseline: str | None = None,
) -> RenderedReport:
    """Write the report's Markdown and one PNG per section with a figure (and one per section
    with a heatmap, `<section>-heatmap.png`) into `out` (a local folder or a URI:
    dplbench/storage.py)."""
    tables = report_tables(rows, suite, compare, refs, bench, epochs, outcomes, baseline)
    images: dict[str, list[str]] = {}
    pngs = []
    for name, table in tables.items():
        section = SECTIONS[name]
        figures = [(name, section.plot), (f"{name}-heatmap", section.heatmap)]
        for figure_name, plot in figures:
            if plot is None:
                continue
            fig = plot(table)
            path = storage.write(
                out.figure(figure_name), partial(fig.savefig, format="png", dpi=120)
            )
            images.setdefault(name, []).append(out.figure_name(figure_name))
            pngs.append(path)
    text = sections_markdown(tables, suite, images)
    md = storage.write(out.markdown, text)
    return RenderedReport(markdown=md, plots=tuple(pngs), text=text)


def write_report(
    root: ResultsRoot,
    suite: str | None = None,
    compare: bool = True,
    out: str | None = None,
    baseline: str | None = None,
) -> RenderedReport:
    """`dplbench report`: the newest rows under `root` with their per-sample outcomes (95%
    intervals; paired comparisons against `baseline`), its calibrations (`bench model
    --results R`: the cost figure) and per-epoch test scores (`--eval-every-epoch`: the
    selection-gap table), rendered into `out` (default: R/reports/<suite>/)."""
    from dplbench.plan.cost import load_all
    from dplbench.results import store

    store.require_results(root, suite)
    rows = store.latest_rows(root).to_pylist()
    calibrations = load_all(root.bench_dir())
    bench = calibrations[0].rows if calibrations else []
    epochs = []
    if store.has_rows(root, "epochs"):
        table = store.query(root, "SELECT * FROM epochs")
        if any(c.startswith("test_") for c in table.column_names):
            epochs = table.to_pylist()
    files = ReportFiles(out) if out else root.report_files(suite)
    # Only the reported jobs' outcomes: a suite's report need not read the whole root's.
    jobs = None if suite is None else sorted({r["job_id"] for r in rows if r["suite"] == suite})
    return render_report(rows, files, suite=suite, compare=compare, bench=bench, epochs=epochs,
                         outcomes=load_outcomes(root, jobs), baseline=baseline)  # fmt: skip
