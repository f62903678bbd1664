"""``report.html``: one self-contained page that shows how the service behaved.

Open it in any browser, offline: plots are inline SVG drawn by matplotlib, styles are inline, no
script and no network access. The page has

* headline figures: requests (complete / partial), TTFT, time per output token and end-to-end
  latency (p50 / p99), output tokens per second, engine steps, mean batch size, peak KV usage;
* latency distributions: TTFT, time per output token and end-to-end histograms of the complete
  requests, p50 and p99 marked;
* latency over the run: TTFT and end-to-end latency of each request by arrival time;
* engine steps over time: requests per step and tokens per step, prefill and decode stacked;
* KV cache and queues over time: KV-cache usage (%) and the running / waiting queue lengths;
* the summary tables (``service_summary``, ``request_summary``, ``batch_summary``).

Time axes count seconds from the first record of the capture (its UTC time is printed in the
page header). Series longer than ``MAX_POINTS`` are drawn as per-interval means with a min-max
band, so a long capture still gives a small, fast page.
"""

from __future__ import annotations

import html
import io
import logging
import math
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np
import pandas as pd

_logger = logging.getLogger(__name__)

MAX_POINTS = 1000  # about one per pixel column of a plot on a laptop screen
SCATTER_VECTOR_LIMIT = 1500
_ID_ATTR = re.compile(r'(\sid=)"([^"]+)"')
_ID_REF = re.compile(r'(url\(|href=")#')
SUMMARY_ORDER = ("service_summary", "request_summary", "batch_summary")
SUMMARY_TITLES = {"service_summary": "Service", "request_summary": "Requests",
                  "batch_summary": "Engine steps (batches)"}

COLORS = {
    "ttft": "#3b6fb6", "tpot": "#2e9e6b", "e2e": "#c2474a", "prefill": "#e08a3c",
    "decode": "#3b6fb6", "kv": "#7a5cc4", "running": "#3b6fb6", "waiting": "#c2474a",
    "ink": "#2b2f36", "muted": "#6b7280", "grid": "#e5e7eb",
}
_STYLE = {
    "svg.fonttype": "none",  # real <text>: crisp, searchable, small
    "font.family": "sans-serif",
    "font.size": 9.5,
    "axes.edgecolor": "#9ca3af",
    "axes.labelcolor": COLORS["ink"],
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.titlecolor": COLORS["ink"],
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "axes.axisbelow": True,
    "grid.color": COLORS["grid"],
    "grid.linewidth": 0.8,
    "xtick.color": COLORS["muted"],
    "ytick.color": COLORS["muted"],
    "legend.frameon": False,
    "legend.fontsize": 9,
}


def write_report(path: Union[str, Path], requests: pd.DataFrame, batches: pd.DataFrame,
                 kvcache: pd.DataFrame, summaries: Mapping[str, pd.DataFrame],
                 frame: Optional[pd.DataFrame] = None,
                 title: str = "vLLM service profile") -> Path:
    """Write ``report.html`` at ``path`` (see the module docstring); returns the path.

    ``requests``, ``batches``, ``kvcache`` are the builders' tables (with their internal µs
    columns), ``summaries`` maps ``service_summary`` / ``request_summary`` / ``batch_summary``
    to their tables, ``frame`` (optional) supplies the queue-length records and the capture
    start. Missing or empty inputs leave their section with a note, never an exception.
    """
    path = Path(path)
    text = render_report(requests, batches, kvcache, summaries, frame, title)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def render_report(requests: Optional[pd.DataFrame], batches: Optional[pd.DataFrame],
                  kvcache: Optional[pd.DataFrame], summaries: Mapping[str, pd.DataFrame],
                  frame: Optional[pd.DataFrame] = None,
                  title: str = "vLLM service profile") -> str:
    """The report page as HTML text."""
    requests = _table(requests)
    batches = _table(batches)
    kvcache = _table(kvcache)
    origin = _origin_us(frame, requests, batches, kvcache)
    sections = [
        ("Latency distributions",
         "Complete requests only. Solid line: median (p50); dashed line: p99.",
         lambda: _latency_histograms(requests)),
        ("Latency over the run",
         "Each dot is one request, placed at its arrival time.",
         lambda: _latency_over_time(requests, origin)),
        ("Engine steps over time",
         "Requests and tokens scheduled in each engine step, prefill and decode stacked.",
         lambda: _steps_over_time(batches, origin)),
        ("KV cache and queues over time",
         "KV-cache block usage after each scheduling step and each request's release, and the "
         "scheduler's queue lengths.",
         lambda: _kv_and_queues(kvcache, frame, origin)),
    ]
    body = [_header(title, requests, batches, kvcache, summaries, origin)]
    import matplotlib

    with matplotlib.rc_context(_STYLE):
        for heading, caption, draw in sections:
            body.append(_section(heading, caption, draw))
    body.append(_summary_tables(summaries))
    return _PAGE.format(title=html.escape(title), css=_CSS, body="\n".join(body))


def _table(value: Optional[pd.DataFrame]) -> pd.DataFrame:
    return value if isinstance(value, pd.DataFrame) else pd.DataFrame()


def _column(table: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64 (NaN where missing); all NaN if the column is absent."""
    if name not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype="float64",
                                                                 na_value=np.nan)


def _complete(requests: pd.DataFrame) -> pd.DataFrame:
    if "partial" not in requests.columns:
        return requests
    return requests.loc[~requests["partial"].fillna(False).astype(bool).to_numpy()]


def _finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def _origin_us(frame: Optional[pd.DataFrame], requests: pd.DataFrame, batches: pd.DataFrame,
               kvcache: pd.DataFrame) -> float:
    """The capture's first instant (µs since the epoch): time axes count from here."""
    candidates = []
    if frame is not None and not frame.empty and "start_us" in frame.columns:
        candidates.append(_finite(frame["start_us"].to_numpy(dtype="float64")))
    candidates += [_finite(_column(requests, "arrival_us")),
                   _finite(_column(batches, "sched_start_us")),
                   _finite(_column(kvcache, "start_us"))]
    values = [c.min() for c in candidates if c.size]
    return float(min(values)) if values else 0.0


def _utc(us: float) -> str:
    return datetime.fromtimestamp(us / 1e6, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ----------------------------------------------------------------------------- header tiles

def _header(title: str, requests: pd.DataFrame, batches: pd.DataFrame, kvcache: pd.DataFrame,
            summaries: Mapping[str, pd.DataFrame], origin: float) -> str:
    done = _complete(requests)
    partial = len(requests) - len(done)
    ends = [_finite(_column(requests, "end_us")), _finite(_column(batches, "exec_end_us")),
            _finite(_column(kvcache, "start_us"))]
    last = max((e.max() for e in ends if e.size), default=origin)
    tiles = [
        ("Requests", f"{len(requests):,}",
         f"{len(done):,} complete · {partial:,} partial" if len(requests) else "none found"),
        _percentile_tile("Time to first token", _column(done, "ttft_ms")),
        _percentile_tile("Time per output token", _column(done, "tpot_ms")),
        _percentile_tile("End-to-end latency", _column(done, "e2e_ms")),
        ("Output tokens / s", _fmt(_service_value(summaries, "generate_token_speed (token/s)")),
         "generated tokens ÷ first arrival to last response"),
        ("Engine steps", f"{len(batches):,}",
         "mean batch " + _fmt(_mean(_column(batches, "total_batch_size"))) + " requests"),
        ("Peak KV-cache usage", _fmt(_max(_column(kvcache, "kvcache_usage_rate")) * 100) + " %",
         "of " + _fmt(_max(_column(kvcache, "total_blocks"))) + " blocks"),
    ]
    tile_html = "\n".join(
        f'<div class="tile"><div class="label">{html.escape(label)}</div>'
        f'<div class="value">{html.escape(value)}</div>'
        f'<div class="note">{html.escape(note)}</div></div>' for label, value, note in tiles)
    span = (f"{_utc(origin)} · {(last - origin) / 1e6:,.1f} s captured" if origin else
            "no timed records")
    return (f'<header><h1>{html.escape(title)}</h1><p class="sub">{html.escape(span)}</p>'
            f'</header>\n<div class="tiles">{tile_html}</div>')


def _percentile_tile(label: str, values: np.ndarray) -> tuple[str, str, str]:
    data = _finite(values)
    if not data.size:
        return label, "–", "no complete requests"
    p50, p99 = np.percentile(data, [50, 99])
    return label, f"{_fmt(p50)} ms", f"p50 · p99 {_fmt(p99)} ms"


def _service_value(summaries: Mapping[str, pd.DataFrame], metric: str) -> float:
    table = summaries.get("service_summary") if summaries else None
    if table is None or table.empty or "Metric" not in table.columns:
        return math.nan
    match = table.loc[table["Metric"] == metric, "Value"]
    return float(pd.to_numeric(match, errors="coerce").iloc[0]) if len(match) else math.nan


def _mean(values: np.ndarray) -> float:
    data = _finite(values)
    return float(data.mean()) if data.size else math.nan


def _max(values: np.ndarray) -> float:
    data = _finite(values)
    return float(data.max()) if data.size else math.nan


def _fmt(value: Any) -> str:
    """Numbers for people: 3 significant digits below 100, thousands separators above."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return "–"
    if abs(number) >= 100 or number == int(number):
        return f"{number:,.0f}"
    return f"{number:.3g}"


# ----------------------------------------------------------------------------- figures

def _section(heading: str, caption: str, draw: Callable[[], Optional[str]]) -> str:
    try:
        svg = draw()
    except Exception as exc:  # one broken plot must not cost the rest of the page
        _logger.warning("report.html: could not draw %r: %s: %s", heading, type(exc).__name__,
                        exc)
        svg = None
        caption = f"Could not draw this section ({type(exc).__name__}: {exc})."
    content = svg if svg else '<p class="empty">No data for this section in the capture.</p>'
    return (f'<section><h2>{html.escape(heading)}</h2>'
            f'<p class="caption">{html.escape(caption)}</p><div class="figure">{content}</div>'
            f'</section>')


def _figure(width: float, height: float, rows: int = 1, cols: int = 1,
            sharex: bool = False) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    axes = figure.subplots(rows, cols, sharex=sharex, squeeze=False)
    # Fixed margins in inches: an automatic layout engine would double the drawing time.
    panel_gap = 0.55 if cols > 1 else 0.0
    figure.subplots_adjust(left=0.7 / width, right=1 - 0.15 / width, bottom=0.55 / height,
                           top=1 - 0.3 / height, wspace=panel_gap * cols / width * 2,
                           hspace=0.45 * rows / height * 2)
    return figure, axes


def _svg(figure: Any, salt: str) -> str:
    """The figure as inline SVG text: no XML prolog, scales with the page."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.hashsalt": salt}):  # stable, figure-unique element ids
        figure.savefig(buffer, format="svg", metadata={"Date": None}, dpi=144)
    text = buffer.getvalue()
    text = text[text.index("<svg"):]
    # Element ids (figure_1, axes_1, ...) repeat between figures: prefix them and every
    # reference to them, so the page has unique ids and each figure's clip paths stay its own.
    text = _ID_ATTR.sub(lambda m: f'{m.group(1)}"{salt}-{m.group(2)}"', text)
    text = _ID_REF.sub(lambda m: f"{m.group(1)}#{salt}-", text)
    return re.sub(r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1', text, count=1)


def _latency_histograms(requests: pd.DataFrame) -> Optional[str]:
    done = _complete(requests)
    series = [("Time to first token", "ttft", _finite(_column(done, "ttft_ms"))),
              ("Time per output token", "tpot", _finite(_column(done, "tpot_ms"))),
              ("End-to-end latency", "e2e", _finite(_column(done, "e2e_ms")))]
    series = [s for s in series if s[2].size]
    if not series:
        return None
    figure, axes = _figure(10.5, 3.1, 1, len(series))
    for ax, (label, key, values) in zip(axes[0], series):
        counts, edges = np.histogram(values, bins=_bins(values))
        # One filled outline instead of a patch per bar: same picture, a fraction of the work.
        ax.stairs(counts, edges, fill=True, color=COLORS[key], alpha=0.85, linewidth=0)
        ax.set_ylim(bottom=0)
        p50, p99 = np.percentile(values, [50, 99])
        for value, style in ((p50, "-"), (p99, "--")):
            ax.axvline(value, color=COLORS["ink"], linestyle=style, linewidth=1.1)
        ax.set_title(label, loc="left")
        ax.set_xlabel(f"ms  (p50 {_fmt(p50)} · p99 {_fmt(p99)} · n {values.size:,})")
        ax.grid(axis="x", visible=False)
    axes[0][0].set_ylabel("requests")
    return _svg(figure, "latency")


def _note(ax: Any, text: str) -> None:
    """A small grey remark at the right end of a panel's title line."""
    ax.set_title(text, loc="right", fontsize=8.5, fontweight="normal", color=COLORS["muted"])


def _bins(values: np.ndarray) -> int:
    return int(min(60, max(10, math.sqrt(values.size) * 1.5)))


def _latency_over_time(requests: pd.DataFrame, origin: float) -> Optional[str]:
    arrival = (_column(requests, "arrival_us") - origin) / 1e6
    ttft = _column(requests, "ttft_ms")
    e2e = _column(requests, "e2e_ms")
    have_ttft = np.isfinite(arrival) & np.isfinite(ttft)
    have_e2e = np.isfinite(arrival) & np.isfinite(e2e)
    if not have_ttft.any() and not have_e2e.any():
        return None
    figure, axes = _figure(10.5, 2.9, 1, 2, sharex=True)
    many = len(requests) > SCATTER_VECTOR_LIMIT
    for ax, (label, key, values, mask) in zip(axes[0], (
            ("Time to first token", "ttft", ttft, have_ttft),
            ("End-to-end latency", "e2e", e2e, have_e2e))):
        # Beyond SCATTER_VECTOR_LIMIT dots, one embedded bitmap is far smaller than an SVG element
        # per dot; axes and labels stay vector.
        size = 6 if not many else 4 if len(requests) <= 10_000 else 2
        ax.scatter(arrival[mask], values[mask], s=size, color=COLORS[key],
                   alpha=0.55, linewidths=0, rasterized=many)
        ax.set_title(label, loc="left")
        ax.set_xlabel("arrival (s since capture start)")
        ax.set_ylabel("ms")
        ax.set_ylim(bottom=0)
    return _svg(figure, "latency-time")


def _binned(x: np.ndarray, ys: list[np.ndarray]) -> tuple[np.ndarray, list, list, list]:
    """Long series -> per-interval mean, min and max (x: interval centres)."""
    order = np.argsort(x, kind="stable")
    x = x[order]
    ys = [y[order] for y in ys]
    if x.size <= MAX_POINTS:
        return x, ys, ys, ys
    edges = np.linspace(x[0], x[-1], MAX_POINTS + 1)
    index = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, MAX_POINTS - 1)
    counts = np.bincount(index, minlength=MAX_POINTS)
    keep = counts > 0
    centres = ((edges[:-1] + edges[1:]) / 2)[keep]
    means, lows, highs = [], [], []
    for y in ys:
        sums = np.bincount(index, weights=np.nan_to_num(y), minlength=MAX_POINTS)
        means.append(sums[keep] / counts[keep])
        low = np.full(MAX_POINTS, np.inf)
        high = np.full(MAX_POINTS, -np.inf)
        np.minimum.at(low, index, y)
        np.maximum.at(high, index, y)
        lows.append(low[keep])
        highs.append(high[keep])
    return centres, means, lows, highs


def _steps_over_time(batches: pd.DataFrame, origin: float) -> Optional[str]:
    start = _column(batches, "sched_start_us")
    start = np.where(np.isfinite(start), start, _column(batches, "exec_start_us"))
    keep = np.isfinite(start)
    if not keep.any():
        return None
    x = (start[keep] - origin) / 1e6
    panels = [
        ("Requests per step", "requests", _column(batches, "Prefill_batch_size")[keep],
         _column(batches, "Decode_batch_size")[keep], _column(batches, "total_batch_size")[keep]),
        ("Tokens per step", "tokens", _column(batches, "Prefill_scheduled_tokens")[keep],
         _column(batches, "Decode_scheduled_tokens")[keep],
         _column(batches, "total_scheduled_tokens")[keep]),
    ]
    engines = _engine_keys(batches.loc[keep] if len(batches) else batches,
                           np.ones(int(keep.sum()), dtype=bool))
    figure, axes = _figure(10.5, 4.6, 2, 1, sharex=True)
    for ax, (title, unit, prefill, decode, total) in zip(axes[:, 0], panels):
        split = np.isfinite(prefill).any() or np.isfinite(decode).any()
        if len(engines) > 1:
            # Several engines (data parallel): steps interleave, so one line per engine.
            if not np.isfinite(total).any():
                total = np.nan_to_num(prefill) + np.nan_to_num(decode)
            for label, mask in engines:
                centres, (mean,), _, _ = _binned(x[mask], [np.nan_to_num(total[mask])])
                ax.plot(centres, mean, linewidth=1, drawstyle="steps-mid", label=label)
            ax.legend(loc="upper right", ncols=min(4, len(engines)))
        elif split:
            prefill = np.nan_to_num(prefill)
            decode = np.nan_to_num(decode)
            centres, (p_mean, d_mean), _, _ = _binned(x, [prefill, decode])
            ax.stackplot(centres, d_mean, p_mean, colors=[COLORS["decode"], COLORS["prefill"]],
                         labels=["decode", "prefill"], alpha=0.8, step="mid", linewidth=0)
            ax.legend(loc="upper right", ncols=2)
        elif np.isfinite(total).any():
            centres, (mean,), (low,), (high,) = _binned(x, [np.nan_to_num(total)])
            ax.fill_between(centres, low, high, color=COLORS["decode"], alpha=0.2, linewidth=0)
            ax.plot(centres, mean, color=COLORS["decode"], linewidth=1)
        ax.set_title(title, loc="left")
        ax.set_ylabel(unit)
        ax.set_ylim(bottom=0)
    axes[-1][0].set_xlabel("seconds since capture start")
    if x.size > MAX_POINTS:
        _note(axes[0][0], f"{x.size:,} steps shown as {MAX_POINTS:,} interval means")
    return _svg(figure, "steps")


def _queue_series(frame: Optional[pd.DataFrame]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Queue name (lower case) -> (times µs, sizes) from Enqueue / Dequeue records."""
    if frame is None or frame.empty or "name" not in frame.columns:
        return {}
    rows = frame.loc[frame["name"].isin(("Enqueue", "Dequeue")).to_numpy()]
    if {"host", "pid"} <= set(rows.columns):  # "host pid", column-wise (row-wise agg is slow)
        engines = [f"{host} {pid}" for host, pid in zip(rows["host"].astype(str).tolist(),
                                                         rows["pid"].astype(str).tolist())]
    else:
        engines = [""] * len(rows)
    several = len(set(engines)) > 1  # data parallel: one series per queue and engine
    series: dict[str, tuple[list, list]] = {}
    for start, metrics, scopes, engine in zip(rows["start_us"].tolist(), rows["metrics"].tolist(),
                                              rows["scopes"].tolist(), engines):
        size = (metrics or {}).get("QueueSize")
        queue = str((scopes or {}).get("QueueName", "")).lower()
        if several and queue:
            queue = f"{queue} {engine}"
        if queue and size is not None and math.isfinite(size):
            times, sizes = series.setdefault(queue, ([], []))
            times.append(start)
            sizes.append(size)
    return {k: (np.asarray(t, dtype="float64"), np.asarray(s, dtype="float64"))
            for k, (t, s) in series.items()}


def _kv_and_queues(kvcache: pd.DataFrame, frame: Optional[pd.DataFrame],
                   origin: float) -> Optional[str]:
    usage = _column(kvcache, "kvcache_usage_rate") * 100
    kv_time = _column(kvcache, "start_us")
    have_kv = np.isfinite(usage) & np.isfinite(kv_time)
    queues = _queue_series(frame)
    if not have_kv.any() and not queues:
        return None
    panels = int(have_kv.any()) + int(bool(queues))
    figure, axes = _figure(10.5, 2.4 * panels + 0.3, panels, 1, sharex=True)
    ax_list = list(axes[:, 0])
    if have_kv.any():
        ax = ax_list.pop(0)
        engines = _engine_keys(kvcache, have_kv)
        for label, mask in engines:
            x = (kv_time[mask] - origin) / 1e6
            centres, (mean,), (low,), (high,) = _binned(x, [usage[mask]])
            color = COLORS["kv"] if len(engines) == 1 else None
            line = ax.plot(centres, mean, linewidth=1.1, color=color,
                           label=label if len(engines) > 1 else None, drawstyle="steps-post")
            ax.fill_between(centres, 0, high, color=line[0].get_color(), alpha=0.15,
                            linewidth=0, step="post")
        if len(engines) > 1:
            ax.legend(loc="upper right")
        ax.set_title("KV-cache usage", loc="left")
        ax.set_ylabel("% of blocks")
        ax.set_ylim(0, max(5.0, min(100.0, float(np.nanmax(usage[have_kv])) * 1.15)))
    if queues:
        ax = ax_list.pop(0)
        for name in sorted(queues, key=lambda n: (not n.startswith("running"), n)):
            times, sizes = queues[name]
            centres, (mean,), _, _ = _binned((times - origin) / 1e6, [sizes])
            ax.plot(centres, mean, drawstyle="steps-post", linewidth=1.1,
                    color=COLORS.get(name), label=name)
        ax.legend(loc="upper right", ncols=min(4, len(queues)))
        ax.set_title("Queue lengths", loc="left")
        ax.set_ylabel("requests")
        ax.set_ylim(bottom=0)
    axes[-1][0].set_xlabel("seconds since capture start")
    return _svg(figure, "kv-queues")


def _engine_keys(table: pd.DataFrame, mask: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """One (label, row mask) per engine process of a table with ``host``/``pid`` columns."""
    if "pid" not in table.columns:
        return [("", mask)]
    hosts = table["host"].astype(str).to_numpy() if "host" in table.columns else np.full(
        len(table), "")
    pids = table["pid"].astype(str).to_numpy()
    keys = sorted(set(zip(hosts[mask].tolist(), pids[mask].tolist())))
    if len(keys) <= 1:
        return [("", mask)]
    return [(f"{host} {pid}".strip(), mask & (hosts == host) & (pids == pid))
            for host, pid in keys]


# ----------------------------------------------------------------------------- tables

def _summary_tables(summaries: Mapping[str, pd.DataFrame]) -> str:
    summaries = summaries or {}
    names = [n for n in SUMMARY_ORDER if n in summaries] + sorted(
        n for n in summaries if n not in SUMMARY_ORDER)
    parts = []
    for name in names:
        table = summaries[name]
        if not isinstance(table, pd.DataFrame) or table.empty:
            continue
        title = SUMMARY_TITLES.get(name, name)
        parts.append(f'<div class="table-card"><h3>{html.escape(title)}'
                     f' <span class="file">{html.escape(name)}.csv</span></h3>'
                     f'{_html_table(table)}</div>')
    if not parts:
        return ('<section><h2>Summary tables</h2><p class="empty">No summary tables.</p>'
                '</section>')
    return '<section><h2>Summary tables</h2>' + "\n".join(parts) + '</section>'


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    rows = []
    for record in table.itertuples(index=False, name=None):
        cells = []
        for value in record:
            if isinstance(value, str):
                cells.append(f'<td class="text">{html.escape(value)}</td>')
            else:
                cells.append(f"<td>{html.escape(_cell(value))}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _cell(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "" if value is None else str(value)
    if not math.isfinite(number):
        return "–"
    if number == int(number) and abs(number) < 1e15:
        return f"{int(number):,}"
    return f"{number:,.4f}".rstrip("0").rstrip(".") if abs(number) < 1000 else f"{number:,.1f}"


_CSS = """
:root { --ink:#2b2f36; --muted:#6b7280; --line:#e5e7eb; --bg:#f6f7f9; --card:#ffffff;
        --accent:#3b6fb6; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--ink);
       font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
       sans-serif; }
main { max-width: 1120px; margin: 0 auto; padding: 28px 24px 48px; }
header h1 { margin: 0; font-size: 26px; letter-spacing: -0.01em; }
header .sub { margin: 4px 0 20px; color: var(--muted); }
.tiles { display:grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr)); gap:12px; }
.tile { background:var(--card); border:1px solid var(--line); border-radius:10px;
        padding:12px 14px; border-top:3px solid var(--accent); }
.tile .label { font-size:12px; text-transform:uppercase; letter-spacing:.04em;
               color:var(--muted); }
.tile .value { font-size:24px; font-weight:650; margin-top:2px;
               font-variant-numeric: tabular-nums; }
.tile .note { font-size:12.5px; color:var(--muted); }
section { background:var(--card); border:1px solid var(--line); border-radius:10px;
          padding:18px 20px; margin-top:20px; }
section h2 { margin:0; font-size:18px; }
.caption { margin:2px 0 10px; color:var(--muted); font-size:13.5px; }
.figure svg { width:100%; height:auto; display:block; }
.empty { color:var(--muted); font-style:italic; }
.table-card { margin-top:14px; overflow-x:auto; }
.table-card h3 { font-size:15px; margin:0 0 6px; }
.table-card .file { font-weight:400; color:var(--muted); font-size:12.5px; margin-left:6px; }
table { border-collapse:collapse; width:100%; font-size:13.5px;
        font-variant-numeric: tabular-nums; }
th { text-align:right; font-weight:600; color:var(--muted); border-bottom:2px solid var(--line);
     padding:6px 10px; white-space:nowrap; }
td { text-align:right; padding:5px 10px; border-bottom:1px solid var(--line); }
th:first-child, td.text { text-align:left; }
tbody tr:hover { background:#f3f6fb; }
footer { margin-top:24px; color:var(--muted); font-size:12.5px; text-align:center; }
"""

_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<main>
{body}
<footer>Generated by otel-vllm-analyze · times in UTC · latencies in ms</footer>
</main>
</body>
</html>
"""
