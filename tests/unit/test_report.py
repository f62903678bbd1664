"""report.html: built from real capture files through the analyzer's readers and builders."""

import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import simulate_service  # noqa: E402

from otel_vllm_ascend.analysis import report as report_mod  # noqa: E402
from otel_vllm_ascend.analysis import report_figures as figures_mod  # noqa: E402
from otel_vllm_ascend.analysis.batches import build_batches  # noqa: E402
from otel_vllm_ascend.analysis.kvcache import build_kvcache  # noqa: E402
from otel_vllm_ascend.analysis.readers import read_captures  # noqa: E402
from otel_vllm_ascend.analysis.requests import build_requests  # noqa: E402
from otel_vllm_ascend.analysis.steps import engine_steps, step_requests  # noqa: E402
from otel_vllm_ascend.analysis.summaries import (  # noqa: E402
    batch_summary,
    request_summary,
    service_summary,
)


class _Page(HTMLParser):
    """Collects tags, attributes and text; checks that every opened element is closed."""

    VOID = {"meta", "br", "img", "input", "link", "hr", "col", "path", "use", "rect", "line",
            "circle", "stop", "polyline", "polygon", "ellipse"}

    def __init__(self):
        super().__init__()
        self.stack = []
        self.tags = []
        self.attrs = []
        self.text = []
        self.errors = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> (open: {self.stack[-3:]})")
            return
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(text):
    page = _Page()
    page.feed(text)
    page.close()
    return page


@pytest.fixture(scope="module")
def analysed(tmp_path_factory):
    root = tmp_path_factory.mktemp("capture")
    sim = simulate_service(40, seed=3, max_batch=6, max_output=8)
    sim.capture.write(root)
    frame, _, _ = read_captures(root)
    steps = engine_steps(frame)
    per_request = step_requests(steps)
    kvcache = build_kvcache(frame)
    requests = build_requests(frame, steps, per_request)
    batches = build_batches(frame, steps, per_request, kvcache)
    summaries = {"request_summary": request_summary(frame, requests, per_request, batches),
                 "service_summary": service_summary(requests, batches),
                 "batch_summary": batch_summary(batches)}
    return sim, frame, requests, batches, kvcache, summaries


def test_report_is_one_self_contained_well_formed_page(analysed, tmp_path):
    _, frame, requests, batches, kvcache, summaries = analysed
    path = report_mod.write_report(tmp_path / "report.html", requests, batches, kvcache,
                                   summaries, frame=frame)
    assert path == tmp_path / "report.html"
    text = path.read_text(encoding="utf-8")
    page = parse(text)
    assert page.errors == [] and page.stack == []
    # nothing fetched: no scripts, no linked resources, no external URLs in attributes
    assert "script" not in page.tags and "link" not in page.tags and "img" not in page.tags
    external = [(k, v) for k, v in page.attrs if k in ("src", "href", "xlink:href") and v
                and not v.startswith(("#", "data:"))]
    assert external == []
    assert not re.search(r"url\(\s*['\"]?(https?:)?//", text)
    # the four plot sections are inline SVG with their own ids (no clashes between figures)
    assert text.count("<svg") == 4
    ids = re.findall(r'\sid="([^"]+)"', text)
    assert len(ids) == len(set(ids))
    references = set(re.findall(r'(?:url\(|href=")#([^)"]+)', text))
    assert references and references <= set(ids)  # every clip path / glyph link resolves
    assert not list(tmp_path.glob("*.tmp"))


def test_headline_tiles_show_the_request_table_figures(analysed):
    _, frame, requests, batches, kvcache, summaries = analysed
    text = report_mod.render_report(requests, batches, kvcache, summaries, frame)
    done = requests.loc[~requests["partial"].astype(bool)]
    p50, p99 = np.percentile(done["ttft_ms"].to_numpy(dtype=float), [50, 99])
    tile = re.search(r'Time to first token</div><div class="value">([^<]*)</div>'
                     r'<div class="note">([^<]*)</div>', text)
    assert tile.group(1) == f"{figures_mod.fmt_number(p50)} ms"
    assert tile.group(2) == f"p50 · p99 {figures_mod.fmt_number(p99)} ms"
    requests_tile = re.search(r'Requests</div><div class="value">([^<]*)</div>', text)
    assert requests_tile.group(1) == "40"
    steps_tile = re.search(r'Engine steps</div><div class="value">([^<]*)</div>', text)
    assert steps_tile.group(1) == f"{len(batches):,}"
    peak = kvcache["kvcache_usage_rate"].max() * 100
    assert f"{figures_mod.fmt_number(peak)} %" in text


def test_summary_tables_are_rendered_with_every_metric(analysed):
    _, frame, requests, batches, kvcache, summaries = analysed
    page = parse(report_mod.render_report(requests, batches, kvcache, summaries, frame))
    text = " ".join(page.text)
    for table in summaries.values():
        for metric in table["Metric"]:
            assert metric in text
    assert page.tags.count("table") == 3
    total_in = summaries["service_summary"].set_index("Metric").loc[
        "total_input_token_num", "Value"]
    assert f"{int(total_in):,}" in text


def test_queue_lengths_come_from_the_enqueue_dequeue_records(analysed):
    _, frame, *_ = analysed
    queues = figures_mod._queue_series(figures_mod.queue_rows(frame))
    assert set(queues) == {"waiting", "running"}
    rows = frame.loc[frame["name"].isin(["Enqueue", "Dequeue"])]
    waiting = [m["QueueSize"] for m, s in zip(rows["metrics"], rows["scopes"])
               if s.get("QueueName") == "WAITING"]
    assert queues["waiting"][1].tolist() == waiting


def test_empty_inputs_give_a_page_with_notes_not_an_error(tmp_path):
    empty = pd.DataFrame()
    path = report_mod.write_report(tmp_path / "report.html", empty, empty, empty, {})
    text = path.read_text(encoding="utf-8")
    assert parse(text).errors == []
    assert text.count("No data for this section") == 4
    assert "No summary tables." in text
    assert "<svg" not in text


def test_bad_column_values_do_not_break_the_page(analysed):
    _, frame, requests, batches, kvcache, summaries = analysed
    broken = requests.copy()
    broken["ttft_ms"] = "n/a"  # text where numbers belong
    broken_batches = batches.drop(columns=["Prefill_batch_size", "Decode_batch_size"])
    text = report_mod.render_report(broken, broken_batches, kvcache, summaries, frame)
    assert parse(text).errors == []
    assert text.count("<svg") == 4  # TTFT panels drop out, the rest is drawn
    assert "Time per output token" in text


def test_a_failing_plot_leaves_a_note_and_the_rest_of_the_page(analysed, monkeypatch):
    _, frame, requests, batches, kvcache, summaries = analysed

    def boom(*_):
        raise ValueError("synthetic failure")

    monkeypatch.setattr(report_mod, "steps_over_time", boom)
    text = report_mod.render_report(requests, batches, kvcache, summaries, frame)
    assert "Could not draw this section (ValueError: synthetic failure)." in text
    assert text.count("<svg") == 3


def test_long_series_are_drawn_as_interval_means():
    n = figures_mod.MAX_POINTS * 3
    x = np.arange(n, dtype=float)
    y = np.where(np.arange(n) % 3 == 0, 9.0, 0.0)  # every interval: one 9 and two 0
    centres, (mean,), (low,), (high,) = figures_mod._binned(x, [y])
    assert len(centres) == figures_mod.MAX_POINTS
    assert mean == pytest.approx(np.full(figures_mod.MAX_POINTS, 3.0))
    assert (low == 0).all() and (high == 9).all()
    short_x, (short,), _, _ = figures_mod._binned(x[:10], [y[:10]])
    assert short.tolist() == y[:10].tolist()


def test_many_engine_steps_say_how_they_are_shown():
    n = figures_mod.MAX_POINTS + 500
    start = 1_764_400_000_000_000.0 + np.arange(n) * 5000.0
    batches = pd.DataFrame({"sched_start_us": start, "total_batch_size": 4.0,
                            "Prefill_batch_size": 1.0, "Decode_batch_size": 3.0,
                            "Prefill_scheduled_tokens": 30.0, "Decode_scheduled_tokens": 3.0,
                            "total_scheduled_tokens": 33.0})
    text = report_mod.render_report(pd.DataFrame(), batches, pd.DataFrame(), {})
    assert f"{n:,} steps shown as {figures_mod.MAX_POINTS:,} interval means" in text


def test_two_engines_get_one_series_each(tmp_path):
    for seed, api, engine in ((5, 100, 200), (6, 101, 201)):
        sim = simulate_service(10, seed=seed, api_pid=api, engine_pid=engine, max_batch=3)
        sim.capture.write(tmp_path / f"svc{seed}")
    frame, _, _ = read_captures(tmp_path)
    steps = engine_steps(frame)
    per_request = step_requests(steps)
    kvcache = build_kvcache(frame)
    batches = build_batches(frame, steps, per_request, kvcache)
    queues = figures_mod._queue_series(figures_mod.queue_rows(frame))
    assert set(queues) == {"waiting node-a 200", "running node-a 200", "waiting node-a 201",
                           "running node-a 201"}
    svg = figures_mod.steps_over_time(batches, float(frame["start_us"].min()))
    # legend entries are real <text> (svg.fonttype none) naming each engine
    assert "node-a 200" in svg and "node-a 201" in svg


def test_many_requests_are_drawn_as_an_embedded_bitmap_not_an_element_per_dot():
    n = figures_mod.SCATTER_VECTOR_LIMIT + 1000
    rng = np.random.default_rng(1)
    requests = pd.DataFrame({"arrival_us": 1.7e15 + np.arange(n) * 1e4,
                             "ttft_ms": rng.random(n) * 100, "e2e_ms": rng.random(n) * 1000,
                             "partial": False})
    with matplotlib.rc_context(figures_mod.STYLE):  # the page's style: text as <text>
        svg = figures_mod.latency_over_time(requests, 1.7e15)
        small = figures_mod.latency_over_time(requests.head(50), 1.7e15)
    assert svg.count("data:image/png;base64,") == 2  # one bitmap per panel
    # tick marks are <use> elements too (about 30); dots would add one per request
    assert svg.count("<use") < 60
    assert "data:image/png" not in small and small.count("<use") >= 100  # 50 dots x 2


# --- markup lives in analysis/templates/, figures apart from page assembly --------------------

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "analysis" / "templates"


def test_page_is_assembled_from_the_template_files(analysed):
    _, frame, requests, batches, kvcache, summaries = analysed
    text = report_mod.render_report(requests, batches, kvcache, summaries, frame)
    assert (TEMPLATES / "report.css").read_text(encoding="utf-8") in text
    page = (TEMPLATES / "report.html").read_text(encoding="utf-8")
    assert text.startswith(page.split("${title}")[0])
    markup = re.sub(r"<svg.*?</svg>", "", text, flags=re.S)
    assert not re.search(r"\$\{?[A-Za-z_]", markup)  # every placeholder filled
    parts = set(re.findall(r"<!-- part: (\w+) -->", (TEMPLATES / "report_parts.html").read_text()))
    assert parts == set(report_mod.page_parts.parts("report_parts.html"))


def test_values_are_escaped_and_never_read_as_placeholders():
    title = "a <b> & $body ${css}"
    text = report_mod.render_report(None, None, None, {}, title=title)
    assert "<title>a &lt;b&gt; &amp; $body ${css}</title>" in text
    assert text.count("<style>") == 1  # ${css} in a value stays text


def test_no_markup_in_python_and_no_page_assembly_in_the_figures():
    for name in ("report.py", "report_figures.py"):
        source = (ROOT / "analysis" / name).read_text(encoding="utf-8")
        assert not re.search(r"<(div|section|table|tr|td|th|header|style|html|p)[ >]", source), name
    figures = (ROOT / "analysis" / "report_figures.py").read_text(encoding="utf-8")
    assert "html.escape" not in figures and "templates" not in figures.split('"""', 2)[2]


def test_stage_breakdown_section(analysed):
    _, frame, requests, batches, kvcache, summaries = analysed
    from otel_vllm_ascend.analysis.stages import StageSelection, build_stage_breakdown

    per_request = step_requests(engine_steps(frame))
    tables = build_stage_breakdown(frame, batches, per_request,
                                   StageSelection(rids=("<b>$x</b>",)))
    text = report_mod.render_report(requests, batches, kvcache, summaries, frame,
                                    stage_tables=tables)
    page = parse(text)
    assert not page.errors and not page.stack
    shown = "".join(page.text)
    assert "Stage breakdown" in shown and "Prefill steps" in shown
    assert "rid=&lt;b&gt;$x&lt;/b&gt;" in text and "<b>$x" not in text
    mean = tables["decode"].set_index(["selection", "name"]).loc[("all", "scheduling"),
                                                                  "mean(ms)"]
    assert report_mod._cell(mean) in shown
    # without the tables there is no such section
    assert "Stage breakdown" not in report_mod.render_report(requests, batches, kvcache,
                                                             summaries, frame)


def test_report_of_the_records_it_reads_is_the_report_of_the_frame(analysed):
    """The CLI's forked writer draws the report from cli._report_records (the queue records
    and the earliest start) after letting its copy of the frame go: the same page."""
    from otel_vllm_ascend.analysis.cli import _report_records

    _, frame, requests, batches, kvcache, summaries = analysed
    records = _report_records(frame)
    assert 0 < len(records) < len(frame)
    assert frame["name"].isin(("Enqueue", "Dequeue")).any()
    shuffled = frame.copy()  # the earliest start on a record that is not a queue record
    shuffled["start_us"] = shuffled["start_us"] + np.where(
        shuffled["name"].isin(("Enqueue", "Dequeue")), 5e6, 0.0)
    for whole in (frame, shuffled):
        want = report_mod.render_report(requests, batches, kvcache, summaries, whole)
        got = report_mod.render_report(requests, batches, kvcache, summaries,
                                       _report_records(whole))
        assert got == want


def _queue_series_per_record(frame):
    """The queue series as they were made before: a record at a time from its dicts."""
    import math

    rows = frame.loc[frame["name"].isin(("Enqueue", "Dequeue")).to_numpy()]
    engines = [f"{host} {pid}" for host, pid in zip(rows["host"].astype(str).tolist(),
                                                     rows["pid"].astype(str).tolist())]
    several = len(set(engines)) > 1
    series = {}
    for start, metrics, scopes, engine in zip(rows["start_us"].tolist(),
                                              rows["metrics"].tolist(),
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


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("engines", [1, 3])
def test_queue_series_equal_the_per_record_reading(seed, engines):
    # Queue names in any case (merged once lowered), missing or None names, missing or NaN
    # sizes, records of other names, one or several engines (dict columns as plain dicts).
    rng = np.random.default_rng(seed)
    n = 300
    names = rng.choice(["WAITING", "waiting", "RUNNING", "Swapped", None, "missing"], n)
    scopes = [{} if name == "missing" else {"QueueName": name} for name in names]
    sizes = rng.integers(0, 9, n).astype(float)
    sizes[rng.random(n) < 0.1] = np.nan
    metrics = [{} if rng.random() < 0.1 else {"QueueSize": size} for size in sizes]
    frame = pd.DataFrame({
        "name": rng.choice(["Enqueue", "Dequeue", "httpReq"], n),
        "host": pd.Categorical(rng.choice(["node-a", "node b"], n) if engines > 1
                               else ["node-a"] * n),
        "pid": (rng.integers(0, engines, n) + 100).astype(np.int16),
        "start_us": np.sort(rng.uniform(0, 1e6, n)),
        "metrics": metrics, "scopes": scopes})
    got = figures_mod._queue_series(figures_mod.queue_rows(frame))
    want = _queue_series_per_record(frame)
    assert list(got) == list(want) and len(want) >= 3
    for key in want:
        np.testing.assert_array_equal(got[key][0], want[key][0])
        np.testing.assert_array_equal(got[key][1], want[key][1])
