"""``compare.html``: the comparison of two runs as one self-contained page.

Headline tiles (rows compared, differences beyond noise, B's TTFT, end-to-end latency and step
time against A's), one note per input that lacks something, the paired plots
(:mod:`.compare_figures`: distribution of every table metric for A and B, median duration per
span name) and the whole ``compare.csv`` table with the flagged rows marked. Markup comes from
``templates/compare_parts.html`` inside ``templates/report.html``; every value is escaped
before substitution.
"""

from __future__ import annotations

import html
import logging
import math
from pathlib import Path
from string import Template
from typing import Any, Callable, Optional

import pandas as pd

from otel_vllm_ascend.analysis import page_parts
from otel_vllm_ascend.analysis.compare import RunValues, flagged, partial_message
from otel_vllm_ascend.analysis.report_figures import STYLE, fmt_number

_logger = logging.getLogger(__name__)

TABLE_COLUMNS = (("section", "section"), ("metric", "metric"), ("unit", "unit"),
                 ("n_a", "n A"), ("n_b", "n B"), ("value_a", "A (p50)"),
                 ("value_b", "B (p50)"), ("diff", "B − A"), ("rel_diff", "relative"),
                 ("rel_diff_mean", "mean, relative"), ("prob_b_higher", "P(B > A)"),
                 ("p_value", "p"), ("verdict", "verdict"))


def _fill(part: str, **values: str) -> str:
    return page_parts.parts("report_parts.html", "compare_parts.html")[part].substitute(values)


def write_compare_report(path: Path, table: pd.DataFrame, a: RunValues, b: RunValues) -> Path:
    """Write ``compare.html`` at ``path``; returns the path."""
    path = Path(path)
    text = render_compare_report(table, a, b)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def render_compare_report(table: pd.DataFrame, a: RunValues, b: RunValues) -> str:
    from otel_vllm_ascend.analysis import compare_figures

    title = "Comparison of two vLLM runs"
    verdicts = {row.metric: row.verdict for row in table.itertuples()
                if row.section in ("request", "batch")}
    sections = [
        ("Distributions, A and B",
         "Share of values up to x (complete requests; engine steps). A steeper curve further "
         "left means lower values. The verdict is in each panel's corner.",
         lambda: compare_figures.distribution_pairs(a, b, verdicts)),
        ("Spans: median duration",
         "Median duration per span name; names marked * and in red differ beyond noise.",
         lambda: compare_figures.span_medians(table)),
    ]
    body = [_header(title, table, a, b)]
    import matplotlib

    with matplotlib.rc_context(STYLE):
        for heading, caption, draw in sections:
            body.append(_section(heading, caption, draw))
    body.append(_fill("section", heading="All compared values", caption=html.escape(
        "Every row of compare.csv. Flagged rows: the Mann–Whitney test gives p below alpha and "
        "the median or mean moved by at least the minimum effect (see docs/analysis.md)."),
        content=_html_table(table)))
    page = Template(page_parts.template_text("report.html"))
    css = page_parts.template_text("report.css") + page_parts.template_text("compare.css")
    return page.substitute(title=html.escape(title), css=css, body="\n".join(body))


def _row_value(table: pd.DataFrame, metric: str, column: str) -> float:
    match = table.loc[table["metric"] == metric, column]
    value = match.iloc[0] if len(match) else math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _change_tile(table: pd.DataFrame, label: str, metric: str) -> tuple[str, str, str]:
    value_b = _row_value(table, metric, "value_b")
    rel = _row_value(table, metric, "rel_diff")
    verdict = table.loc[table["metric"] == metric, "verdict"]
    verdict_text = str(verdict.iloc[0]) if len(verdict) else "not compared"
    if math.isnan(rel):
        return label, "–", verdict_text
    section = table.loc[table["metric"] == metric, "section"].iloc[0]
    what = "B" if section == "service" else "B p50"
    return (label, f"{rel * 100:+.1f} %",
            f"{what} {fmt_number(value_b)} vs A {fmt_number(_row_value(table, metric, 'value_a'))}"
            f" · {verdict_text}")


def _header(title: str, table: pd.DataFrame, a: RunValues, b: RunValues) -> str:
    n_flagged = len(flagged(table))
    tested = int(table["p_value"].notna().sum())
    tiles = [
        ("Differences beyond noise", f"{n_flagged:,}", f"of {tested:,} tested rows"),
        _change_tile(table, "TTFT (median)", "TTFT"),
        _change_tile(table, "End-to-end (median)", "end-to-end latency"),
        _change_tile(table, "Step time (median)", "model execution per step"),
        _change_tile(table, "Output tokens / s", "generate_token_speed (token/s)"),
    ]
    tile_html = "\n".join(
        _fill("tile", label=html.escape(label), value=html.escape(value), note=html.escape(note))
        for label, value, note in tiles)
    notes = "\n".join(_fill("note", text=html.escape(message))
                      for message in (partial_message(a), partial_message(b)) if message)
    return _fill("header", title=html.escape(title), path_a=html.escape(str(a.path)),
                 kind_a=html.escape(a.kind), path_b=html.escape(str(b.path)),
                 kind_b=html.escape(b.kind), tiles=tile_html, notes=notes)


def _section(heading: str, caption: str, draw: Callable[[], Optional[str]]) -> str:
    try:
        svg = draw()
    except Exception as exc:  # one broken plot must not cost the rest of the page
        _logger.warning("compare.html: could not draw %r: %s: %s", heading,
                        type(exc).__name__, exc)
        svg = None
        caption = f"Could not draw this section ({type(exc).__name__}: {exc})."
    content = svg if svg else _fill("empty", text="No values on either side.")
    return _fill("section", heading=html.escape(heading), caption=html.escape(caption),
                 content=content)


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(_fill("head_cell", text=html.escape(label)) for _, label in TABLE_COLUMNS)
    rows = []
    for record in table.to_dict("records"):
        cells = []
        for key, _ in TABLE_COLUMNS:
            value = record.get(key)
            if isinstance(value, str):
                cells.append(_fill("text_cell", text=html.escape(value)))
            else:
                cells.append(_fill("number_cell", text=html.escape(_cell(key, value))))
        rows.append(_fill("row", kind="flagged" if record.get("significant") is True else "",
                          cells="".join(cells)))
    return _fill("table", head=head, rows="".join(rows))


def _cell(key: str, value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    if math.isnan(number):
        return "–"
    if key in ("rel_diff", "rel_diff_mean"):
        return f"{number * 100:+.1f} %" if math.isfinite(number) else "new"
    if key == "prob_b_higher":
        return f"{number:.2f}"
    if key == "p_value":
        return f"{number:.2g}"
    if key in ("n_a", "n_b"):
        return f"{int(number):,}"
    return fmt_number(number)
