"""Stage breakdown (``prefill.csv`` / ``decode.csv``) and ``span_info/``, values worked out by hand.

Capture (ms after T0): API server h1/100, EngineCore h1/200, Workers h1/300 and h1/301 (TP 2).

    step 0 Prefill [A]        schedule 0.0-0.5    modelExec 1.0-5.0
        300: forward 1.2-3.2 (2.0)  computing_logits 3.3-3.5 (0.2)  sample 3.5-3.6 (0.1)
        301: forward 1.3-3.6 (2.3)  computing_logits 3.7-3.8 (0.1)  sample 3.8-4.1 (0.3)
        detokenize [A] 5.6
    step 1 Decode [A]         schedule 6.0-6.3    modelExec 7.0-9.0
        300: forward 7.1-8.1 (1.0)  computing_logits 8.2-8.3 (0.1)  sample 8.3-8.4 (0.1)
        301: forward 7.1-8.3 (1.2)
        detokenize [A] 9.5
    step 2 Prefill,Decode [A decode, B prefill]  schedule 10.0-10.4  modelExec 11.0-14.0
        300: forward 11.1-13.1 (2.0)
        301: forward 11.2-12.0 (0.8) and 12.1-13.5 (1.4)
        httpRes A 14.3, detokenize [B] 14.6
    step 3 Decode [B]         schedule 15.0-15.2  modelExec 16.0-17.0  (no Worker, no output)

Per step (ms):        scheduling  model_execution  model_forward  logits_sampling  output  total
    0 (prefill)       0.5         4.0              2.3            0.4 (301)        0.6     6.0
    1 (decode)        0.3         2.0              1.2            0.2 (300)        0.5     4.0
    2 (prefill)       0.4         3.0              2.2 (301 sum)  –                0.3     5.0
    3 (decode)        0.2         1.0              –              –                –       –

Values computed from two instants (output processing, step total) carry the 0.25 µs resolution
of float µs since the epoch, hence tolerances of 1 µs.
"""

import csv
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import Capture, write_otlp_json  # noqa: E402

from otel_vllm_ascend.analysis import detail_outputs, forwards, span_info, stages  # noqa: E402
from otel_vllm_ascend.analysis.batches import build_batches  # noqa: E402
from otel_vllm_ascend.analysis.readers import read_captures  # noqa: E402
from otel_vllm_ascend.analysis.steps import engine_steps, step_requests  # noqa: E402

T0 = 1_767_225_600_000_000.0
S = math.sqrt(0.005)  # sample std of two values 0.1 apart
NAN = float("nan")


def ms(value):
    return T0 + value * 1000.0


def item(rid, it, rtype, tokens):
    return {"rid": rid, "iter": it, "type": rtype, "num_scheduled_tokens": tokens,
            "num_prompt_tokens": 8, "num_computed_tokens": 0 if rtype == 0 else 8 + it - 1}


def stage_capture(tmp_path, otlp=False):
    cap = Capture()
    api = cap.process("h1", 100, "api_server")
    ec = cap.process("h1", 200, "engine_core")
    w300 = cap.process("h1", 300, "worker")
    w301 = cap.process("h1", 301, "worker")
    steps = (
        (0.0, 0.5, 1.0, 5.0, [item("A", 0, 0, 8)], "Prefill"),
        (6.0, 6.3, 7.0, 9.0, [item("A", 1, 1, 1)], "Decode"),
        (10.0, 10.4, 11.0, 14.0, [item("A", 2, 1, 1), item("B", 0, 0, 8)], "Prefill,Decode"),
        (15.0, 15.2, 16.0, 17.0, [item("B", 1, 1, 1)], "Decode"),
    )
    for s0, s1, e0, e1, items, kind in steps:
        ec.span("batchFrameworkProcessing", ms(s0), ms(s1), "Schedule", items,
                batch_type=kind, batch_size=len(items))
        ec.span("modelExec", ms(e0), ms(e1), "Execute", items, batch_type=kind)
    for proc, name, start, end in (
            (w300, "forward", 1.2, 3.2), (w300, "computing_logits", 3.3, 3.5),
            (w300, "sample", 3.5, 3.6),
            (w301, "forward", 1.3, 3.6), (w301, "computing_logits", 3.7, 3.8),
            (w301, "sample", 3.8, 4.1),
            (w300, "forward", 7.1, 8.1), (w300, "computing_logits", 8.2, 8.3),
            (w300, "sample", 8.3, 8.4),
            (w301, "forward", 7.1, 8.3),
            (w300, "forward", 11.1, 13.1),
            (w301, "forward", 11.2, 12.0), (w301, "forward", 12.1, 13.5)):
        proc.span(name, ms(start), ms(end), "Execute")
    api.event("detokenize", ms(5.6), rid=["A"])
    api.event("detokenize", ms(9.5), rid=["A"])
    api.event("httpRes", ms(14.3), rid="A")
    api.event("detokenize", ms(14.6), rid=["B"])
    if otlp:
        write_otlp_json(cap, tmp_path / "in" / "spans.jsonl")
    else:
        cap.write(tmp_path / "in")
    frame, _, _ = read_captures(tmp_path / "in")
    steps_table = engine_steps(frame)
    per_request = step_requests(steps_table)
    batches = build_batches(frame, steps_table, per_request)
    return frame, batches, per_request


def test_stages_per_step(tmp_path):
    frame, batches, per_request = stage_capture(tmp_path)
    table = stages.step_stages(frame, batches, per_request)
    assert table["phase"].tolist() == ["prefill", "decode", "prefill", "decode"]
    expected = {
        "scheduling": [0.5, 0.3, 0.4, 0.2],
        "model_execution": [4.0, 2.0, 3.0, 1.0],
        "model_forward": [2.3, 1.2, 2.2, NAN],
        "logits_sampling": [0.4, 0.2, NAN, NAN],
        "output_processing": [0.6, 0.5, 0.3, NAN],
        "step_total": [6.0, 4.0, 5.0, NAN],
    }
    for stage, values in expected.items():
        got = table[stage].to_numpy(dtype="float64")
        assert np.array_equal(np.isnan(got), np.isnan(values)), stage
        assert got[~np.isnan(got)] == pytest.approx(
            [v for v in values if not math.isnan(v)], abs=1e-3), stage


def rows_of(table, selection):
    mine = table.loc[table["selection"] == selection]
    return {name: row for name, row in zip(mine["name"], mine.to_dict("records"))}


def check(row, steps, count, stats):
    assert (row["steps"], row["count"]) == (steps, count), row["name"]
    for column, value in zip(("max(ms)", "min(ms)", "mean(ms)", "std(ms)"), stats):
        if value is None:
            assert math.isnan(row[column]), (row["name"], column)
        else:
            assert row[column] == pytest.approx(value, abs=1e-3), (row["name"], column)


def test_breakdown_all_steps(tmp_path):
    frame, batches, per_request = stage_capture(tmp_path)
    tables = stages.build_stage_breakdown(frame, batches, per_request)
    assert list(tables) == ["prefill", "decode"]
    prefill = rows_of(tables["prefill"], "all")
    assert list(prefill) == list(stages.STAGES)
    check(prefill["scheduling"], 2, 2, (0.5, 0.4, 0.45, S))
    check(prefill["model_execution"], 2, 2, (4.0, 3.0, 3.5, math.sqrt(0.5)))
    check(prefill["model_forward"], 2, 2, (2.3, 2.2, 2.25, S))
    check(prefill["logits_sampling"], 2, 1, (0.4, 0.4, 0.4, None))  # one value: no std
    check(prefill["output_processing"], 2, 2, (0.6, 0.3, 0.45, math.sqrt(0.045)))
    check(prefill["step_total"], 2, 2, (6.0, 5.0, 5.5, math.sqrt(0.5)))
    decode = rows_of(tables["decode"], "all")
    check(decode["scheduling"], 2, 2, (0.3, 0.2, 0.25, S))
    check(decode["model_execution"], 2, 2, (2.0, 1.0, 1.5, math.sqrt(0.5)))
    check(decode["model_forward"], 2, 1, (1.2, 1.2, 1.2, None))
    check(decode["logits_sampling"], 2, 1, (0.2, 0.2, 0.2, None))
    check(decode["output_processing"], 2, 1, (0.5, 0.5, 0.5, None))
    check(decode["step_total"], 2, 1, (4.0, 4.0, 4.0, None))


def test_breakdown_selections(tmp_path):
    frame, batches, per_request = stage_capture(tmp_path)
    chosen = stages.StageSelection(batch_sizes=(2, 7), rids=("B", "nobody"))
    tables = stages.build_stage_breakdown(frame, batches, per_request, chosen)
    prefill, decode = tables["prefill"], tables["decode"]
    assert list(dict.fromkeys(prefill["selection"])) == [
        "all", "batch_size=2", "batch_size=7", "rid=B", "rid=nobody"]
    # batch size 2: step 2 (prefill); no decode step has two requests
    check(rows_of(prefill, "batch_size=2")["model_forward"], 1, 1, (2.2, 2.2, 2.2, None))
    check(rows_of(decode, "batch_size=2")["scheduling"], 0, 0, (None,) * 4)
    # B's prompt ran in step 2, its decode in step 3
    check(rows_of(prefill, "rid=B")["output_processing"], 1, 1, (0.3, 0.3, 0.3, None))
    check(rows_of(decode, "rid=B")["model_execution"], 1, 1, (1.0, 1.0, 1.0, None))
    check(rows_of(decode, "rid=B")["model_forward"], 1, 0, (None,) * 4)
    assert stages.unknown_selections(tables) == ["batch_size=7", "rid=nobody"]
    # number: the first step of each selection only
    first = stages.build_stage_breakdown(frame, batches, per_request,
                                         stages.StageSelection(number=1))
    check(rows_of(first["prefill"], "all")["scheduling"], 1, 1, (0.5, 0.5, 0.5, None))
    check(rows_of(first["decode"], "all")["step_total"], 1, 1, (4.0, 4.0, 4.0, None))


def test_breakdown_csv_leaves_missing_statistics_empty(tmp_path):
    frame, batches, per_request = stage_capture(tmp_path)
    built = detail_outputs.DetailTables(
        stage_tables=stages.build_stage_breakdown(frame, batches, per_request))

    class Run:
        def stage(self, what, func, *args):
            return func(*args)

        def wrote(self, path):
            pass

    detail_outputs.write_csvs(Run(), tmp_path, built)
    with open(tmp_path / "decode.csv", newline="") as handle:
        rows = {row["name"]: row for row in csv.DictReader(handle)}
    assert rows["model_forward"] == {"selection": "all", "name": "model_forward", "steps": "2",
                                     "count": "1", "max(ms)": "1.2", "min(ms)": "1.2",
                                     "mean(ms)": "1.2", "std(ms)": ""}


# --- span_info/ ---------------------------------------------------------------------------------

def test_span_info_by_hand(tmp_path):
    frame, _, _ = stage_capture(tmp_path)
    tables, summary, missing = span_info.build_span_info(
        frame, ["forward", "sample", "nope", "detokenize"])
    # defaults first (BatchSchedule is not in the capture: left out), then the names asked for
    assert list(tables) == ["forward", "batchFrameworkProcessing", "sample"]
    assert summary["span_name"].tolist() == ["forward", "batchFrameworkProcessing", "sample",
                                             "nope", "detokenize"]
    assert missing == ["nope", "detokenize"]  # detokenize is an event, not a span
    rows = {r["span_name"]: r for r in summary.to_dict("records")}
    # forward: 2.0 1.0 2.0 (300), 2.3 1.2 0.8 1.4 (301) -> sorted 0.8 1.0 1.2 1.4 2.0 2.0 2.3
    assert rows["forward"]["count"] == 7
    assert [rows["forward"][c] for c in span_info.SUMMARY_COLUMNS[2:]] == pytest.approx(
        [10.7, 1.5286, 0.8, 1.4, 2.12, 2.282, 2.3], abs=1e-4)
    # batchFrameworkProcessing: 0.5 0.3 0.4 0.2
    assert [rows["batchFrameworkProcessing"][c] for c in span_info.SUMMARY_COLUMNS[1:]] == \
        pytest.approx([4, 1.4, 0.35, 0.2, 0.35, 0.47, 0.497, 0.5], abs=1e-4)
    # sample: 0.1 0.3 (step 0), 0.1 (step 1)
    assert [rows["sample"][c] for c in span_info.SUMMARY_COLUMNS[1:]] == pytest.approx(
        [3, 0.5, 0.1667, 0.1, 0.1, 0.26, 0.296, 0.3], abs=1e-4)
    assert rows["nope"]["count"] == 0
    assert all(math.isnan(rows["nope"][c]) for c in span_info.SUMMARY_COLUMNS[2:])
    forward = tables["forward"]
    assert list(forward.columns) == list(span_info.OCCURRENCE_COLUMNS)
    assert forward["pid"].tolist() == [300, 301, 300, 301, 300, 301, 301]
    assert forward["during_time(ms)"].tolist() == pytest.approx(
        [2.0, 2.3, 1.0, 1.2, 2.0, 0.8, 1.4], abs=1e-6)
    assert forward["start_datetime"].iloc[0] == "2026-01-01 00:00:00.001200+00:00"
    assert forward["end_datetime"].iloc[0] == "2026-01-01 00:00:00.003200+00:00"


def test_span_info_folder(tmp_path):
    frame, _, _ = stage_capture(tmp_path)
    folder = tmp_path / "out" / span_info.FOLDER
    folder.mkdir(parents=True)
    (folder / "old_span.csv").write_text("stale\n")
    (folder / "notes.txt").write_text("mine\n")
    tables, summary, _ = span_info.build_span_info(frame, ["sample"])
    detail_outputs.write_span_info(folder, tables, summary)
    assert sorted(p.name for p in folder.iterdir()) == [
        "batchFrameworkProcessing.csv", "forward.csv", "notes.txt", "sample.csv",
        "span_summary.csv"]
    with open(folder / "sample.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["during_time(ms)"] for r in rows] == ["0.1", "0.3", "0.1"]
    assert {r["hostname"] for r in rows} == {"h1"}


def test_span_file_names():
    assert span_info.file_name("EPLB weight D2D") == "EPLB_weight_D2D.csv"
    assert span_info.file_name("../etc/passwd") == "_etc_passwd.csv"
    assert span_info.file_name("MooncakeScheduler.matchRemoteKV") == \
        "MooncakeScheduler.matchRemoteKV.csv"


def test_a_prompt_chunk_has_no_output_processing(tmp_path):
    # C's 8-token prompt runs in two chunks of 4 (steps 0 and 1); only the second yields a token.
    cap = Capture()
    api = cap.process("h1", 100, "api_server")
    ec = cap.process("h1", 200, "engine_core")
    for s0, e0, computed in ((0.0, 1.0, 0), (3.0, 4.0, 4)):
        items = [{"rid": "C", "iter": int(computed > 0), "type": 0, "num_scheduled_tokens": 4,
                  "num_prompt_tokens": 8, "num_computed_tokens": computed}]
        ec.span("batchFrameworkProcessing", ms(s0), ms(s0 + 0.5), "Schedule", items,
                batch_type="Prefill", batch_size=1)
        ec.span("modelExec", ms(e0), ms(e0 + 1.0), "Execute", items, batch_type="Prefill")
    api.event("detokenize", ms(5.5), rid=["C"])
    cap.write(tmp_path / "in")
    frame, _, _ = read_captures(tmp_path / "in")
    steps_table = engine_steps(frame)
    per_request = step_requests(steps_table)
    table = stages.step_stages(frame, build_batches(frame, steps_table, per_request),
                               per_request)
    got = table["output_processing"].to_numpy(dtype="float64")
    assert np.isnan(got[0]) and got[1] == pytest.approx(0.5, abs=1e-3)


def test_otlp_capture_gives_the_same_tables(tmp_path):
    db = stage_capture(tmp_path / "db")
    otlp = stage_capture(tmp_path / "otlp", otlp=True)
    db_stages = stages.build_stage_breakdown(*db)
    otlp_stages = stages.build_stage_breakdown(*otlp)
    for phase in stages.PHASES:
        pd.testing.assert_frame_equal(db_stages[phase], otlp_stages[phase])
    _, db_summary, _ = span_info.build_span_info(db[0], ["sample"])
    _, otlp_summary, _ = span_info.build_span_info(otlp[0], ["sample"])
    pd.testing.assert_frame_equal(db_summary, otlp_summary)
    columns = [c for c in forwards.CSV_COLUMNS if c != "prof_id"]
    pd.testing.assert_frame_equal(forwards.build_forwards(db[0], db[1])[columns],
                                  forwards.build_forwards(otlp[0], otlp[1])[columns])


@pytest.mark.parametrize("selection", [
    None, stages.StageSelection(batch_sizes=(2, 7), rids=("B", "A", "nobody")),
    stages.StageSelection(rids=("A",), number=1)])
def test_breakdown_of_the_rows_kept_for_it_is_the_whole_tables(tmp_path, selection):
    # The CLI keeps only breakdown_rows of the (step, request) table once the tables that
    # read all of it are made: each step's first token-yielding row, every row of the
    # selected requests.
    frame, batches, per_request = stage_capture(tmp_path)
    kept = stages.breakdown_rows(per_request, selection)
    assert len(kept) < len(per_request) or selection is not None
    want = stages.build_stage_breakdown(frame, batches, per_request, selection)
    got = stages.build_stage_breakdown(frame, batches, kept, selection)
    assert list(got) == list(want)
    for phase in want:
        pd.testing.assert_frame_equal(got[phase], want[phase])
