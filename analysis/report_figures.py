"""The figures of ``report.html``: matplotlib drawings returned as inline SVG text.

Each drawing function takes the builders' tables (and the capture's first instant, µs since the
epoch, for time axes) and returns SVG text, or None when its data is absent; page assembly
(headline tiles, sections, tables, templates) is ``report.py``'s job. Call the drawing functions
inside ``matplotlib.rc_context(STYLE)`` so every figure has the page's look. Series longer than
``MAX_POINTS`` are drawn as per-interval means with a min-max band.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.record_dicts import key_floats, key_values

MAX_POINTS = 1000  # about one per pixel column of a plot on a laptop screen

SCATTER_VECTOR_LIMIT = 1500

_ID_ATTR = re.compile(r'(\sid=)"([^"]+)"')

_ID_REF = re.compile(r'(url\(|href=")#')

COLORS = {
    "ttft": "#3b6fb6", "tpot": "#2e9e6b", "e2e": "#c2474a", "prefill": "#e08a3c",
    "decode": "#3b6fb6", "kv": "#7a5cc4", "running": "#3b6fb6", "waiting": "#c2474a",
    "ink": "#2b2f36", "muted": "#6b7280", "grid": "#e5e7eb",
}


STYLE = {
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


# ----------------------------------------------------------------------------- values

def column(table: pd.DataFrame, name: str) -> np.ndarray:
    """A numeric column as float64 (NaN where missing); all NaN if the column is absent."""
    if name not in table.columns:
        return np.full(len(table), np.nan)
    return pd.to_numeric(table[name], errors="coerce").to_numpy(dtype="float64",
                                                                 na_value=np.nan)


LATENCY_COLUMNS = ("ttft_ms", "tpot_ms", "e2e_ms")


def complete_requests(requests: pd.DataFrame,
                      columns: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """The complete requests' rows (of ``columns`` only, those the table has: a copy of every
    column is 0.05 GB at x100)."""
    if "partial" not in requests.columns:
        return requests
    rows = ~requests["partial"].fillna(False).astype(bool).to_numpy()
    if columns is None:
        return requests.loc[rows]
    return requests.loc[rows, [name for name in columns if name in requests.columns]]


def finite(values: np.ndarray) -> np.ndarray:
    return values[np.isfinite(values)]


def mean_of(values: np.ndarray) -> float:
    data = finite(values)
    return float(data.mean()) if data.size else math.nan


def max_of(values: np.ndarray) -> float:
    data = finite(values)
    return float(data.max()) if data.size else math.nan


def fmt_number(value: Any) -> str:
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


# ----------------------------------------------------------------------------- drawing

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


def latency_histograms(requests: pd.DataFrame) -> Optional[str]:
    done = complete_requests(requests, LATENCY_COLUMNS)
    series = [("Time to first token", "ttft", finite(column(done, "ttft_ms"))),
              ("Time per output token", "tpot", finite(column(done, "tpot_ms"))),
              ("End-to-end latency", "e2e", finite(column(done, "e2e_ms")))]
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
        ax.set_xlabel(f"ms  (p50 {fmt_number(p50)} · p99 {fmt_number(p99)} · n {values.size:,})")
        ax.grid(axis="x", visible=False)
    axes[0][0].set_ylabel("requests")
    return _svg(figure, "latency")


def _note(ax: Any, text: str) -> None:
    """A small grey remark at the right end of a panel's title line."""
    ax.set_title(text, loc="right", fontsize=8.5, fontweight="normal", color=COLORS["muted"])


def _bins(values: np.ndarray) -> int:
    return int(min(60, max(10, math.sqrt(values.size) * 1.5)))


def latency_over_time(requests: pd.DataFrame, origin: float) -> Optional[str]:
    arrival = (column(requests, "arrival_us") - origin) / 1e6
    ttft = column(requests, "ttft_ms")
    e2e = column(requests, "e2e_ms")
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


def steps_over_time(batches: pd.DataFrame, origin: float) -> Optional[str]:
    start = column(batches, "sched_start_us")
    start = np.where(np.isfinite(start), start, column(batches, "exec_start_us"))
    keep = np.isfinite(start)
    if not keep.any():
        return None
    x = (start[keep] - origin) / 1e6
    panels = [
        ("Requests per step", "requests", column(batches, "Prefill_batch_size")[keep],
         column(batches, "Decode_batch_size")[keep], column(batches, "total_batch_size")[keep]),
        ("Tokens per step", "tokens", column(batches, "Prefill_scheduled_tokens")[keep],
         column(batches, "Decode_scheduled_tokens")[keep],
         column(batches, "total_scheduled_tokens")[keep]),
    ]
    # Masks over the kept steps (a copy of the kept rows of every column was 0.07 GB at x100).
    engines = [(label, mask[keep]) for label, mask in _engine_keys(batches, keep)]
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


def queue_rows(frame: Optional[pd.DataFrame]) -> Optional[pd.DataFrame]:
    """What the queue lengths are drawn from: per Enqueue / Dequeue record, its ``start_us``,
    ``queue`` (the text of its queue name, a category), ``size``, and ``host`` / ``pid`` when
    the records have them; None without such records' columns."""
    if frame is None or frame.empty or "name" not in frame.columns:
        return None
    rows = frame.loc[frame["name"].isin(("Enqueue", "Dequeue")).to_numpy()]
    # Read a key at a time, each record's queue a category code: the queue records' dicts and
    # texts (a third of a million records at x100) were most of the report's peak.
    queues = pd.Categorical([str(value) for value in
                             key_values(rows["scopes"], "QueueName", "").tolist()])
    table = pd.DataFrame({"start_us": rows["start_us"].to_numpy(dtype="float64"),
                          "queue": queues, "size": key_floats(rows["metrics"], "QueueSize")})
    if {"host", "pid"} <= set(rows.columns):
        table["host"] = rows["host"].astype(str).to_numpy(dtype=object)
        table["pid"] = rows["pid"].to_numpy()
    return table


def _queue_series(rows: Optional[pd.DataFrame]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Queue name (lower case) -> (times µs, sizes) from :func:`queue_rows`' table."""
    if rows is None or rows.empty:
        return {}
    queue_code, queues = _codes_of_text(rows["queue"])
    engine_code, engines = np.zeros(len(rows), dtype=np.int64), [""]
    if {"host", "pid"} <= set(rows.columns):
        hosts = rows["host"].to_numpy(dtype=object)
        engine_code = pd.DataFrame({"host": hosts, "pid": rows["pid"].to_numpy()}).groupby(
            ["host", "pid"], sort=False).ngroup().to_numpy()
        firsts = np.unique(engine_code, return_index=True)[1]
        engines = [f"{host} {pid}" for host, pid in zip(
            hosts[firsts].tolist(), rows["pid"].iloc[firsts].astype(str).tolist())]
    several = len(engines) > 1  # data parallel: one series per queue and engine
    sizes = rows["size"].to_numpy(dtype="float64")
    keep = np.isfinite(sizes) & np.array([queue != "" for queue in queues], dtype=bool)[
        queue_code]
    # Each kept record's (queue, engine) pair, numbered in order of first appearance; a
    # series per text of a pair, in that order.
    pair = queue_code[keep] * len(engines) + (engine_code[keep] if several else 0)
    pair_number, pairs = pd.factorize(pair)
    times, sizes = rows["start_us"].to_numpy(dtype="float64")[keep], sizes[keep]
    numbers: dict[str, list[int]] = {}
    for number, value in enumerate(pairs.tolist()):
        queue = queues[value // len(engines)]
        text = f"{queue} {engines[value % len(engines)]}" if several else queue
        numbers.setdefault(text, []).append(number)
    series = {}
    for text, mine in numbers.items():
        chosen = np.isin(pair_number, mine)
        series[text] = (times[chosen], sizes[chosen])
    return series


def _codes_of_text(texts: pd.Series) -> tuple[np.ndarray, list[str]]:
    """Each text's lower case as a code into the distinct ones (in order of first
    appearance); one lower case made per distinct text, not per record."""
    codes, uniques = pd.factorize(texts.astype(object))
    lowered = np.empty(len(uniques), dtype=object)
    lowered[:] = [text.lower() for text in uniques.tolist()]
    merged, distinct = pd.factorize(lowered)
    return merged[codes], distinct.tolist()


def kv_and_queues(kvcache: pd.DataFrame, queue_table: Optional[pd.DataFrame],
                   origin: float) -> Optional[str]:
    """KV-cache usage and the queue lengths (``queue_table``: :func:`queue_rows`) over time."""
    usage = column(kvcache, "kvcache_usage_rate") * 100
    kv_time = column(kvcache, "start_us")
    have_kv = np.isfinite(usage) & np.isfinite(kv_time)
    queues = _queue_series(queue_table)
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
    """One (label, row mask) per engine process of a table with ``host``/``pid`` columns
    (among the rows of ``mask``).

    Each (host, pid) pair is made text once, from one of its rows (every row's was: two
    object arrays and a set of a tuple per row, batch.csv's and kvcache.csv's rows at x100)."""
    if "pid" not in table.columns or not mask.any():
        return [("", mask)]
    pair = pd.factorize(table["pid"], use_na_sentinel=False)[0].astype(np.int64)
    if "host" in table.columns:
        hosts = pd.factorize(table["host"], use_na_sentinel=False)[0]
        pair += hosts * (int(pair.max()) + 1)
        del hosts
    codes, first = np.unique(pair[mask], return_index=True)
    rows = np.flatnonzero(mask)[first]
    host_text = (table["host"].iloc[rows].astype(str).to_numpy() if "host" in table.columns
                 else np.full(len(rows), ""))
    pid_text = table["pid"].iloc[rows].astype(str).to_numpy()
    pairs: dict = {}  # (host, pid) as text -> the pair codes written so
    for code, host, pid in zip(codes.tolist(), host_text.tolist(), pid_text.tolist()):
        pairs.setdefault((host, pid), []).append(code)
    keys = sorted(pairs)
    if len(keys) <= 1:
        return [("", mask)]
    return [(f"{host} {pid}".strip(), mask & np.isin(pair, pairs[(host, pid)]))
            for host, pid in keys]
