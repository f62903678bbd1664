"""profiler.db for MindStudio Insight: registry tables, curve views, latency tables, by hand.

The whole-database test reads the golden capture of ``test_analysis_golden`` (its timeline is
in that module's docstring): requests A (arrival 0.0 ms, TTFT 9.0, end 16.0, e2e 16.0) and B
(arrival 4.0, TTFT 12.5, end 21.0, e2e 17.0); steps of 1/2/1 requests and 10/7/1 tokens; KV
usage 2, 3, 1, 1, 0 % at 2.45, 10.35, 15.5, 17.1, 20.5 ms.
"""

import math
import sqlite3
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from test_analysis_golden import T0, golden_capture  # noqa: E402

from otel_vllm_ascend.analysis import insight_db  # noqa: E402
from otel_vllm_ascend.analysis.cli import main as analyze_main  # noqa: E402


def ms(value):
    return T0 + value * 1000.0


def stamp(ms_after_t0):
    """The UTC text of T0 (2026-01-01T00:00:00Z) + ``ms_after_t0``."""
    micro = round(ms_after_t0 * 1000)
    return f"2026-01-01 00:00:{micro // 1_000_000:02d}.{micro % 1_000_000:06d}+00:00"


# ----------------------------------------------------------------------------- the tables alone

def test_first_token_latency_windows_by_hand():
    requests = pd.DataFrame({
        "arrival_us": [ms(0), ms(50), ms(120), ms(150), ms(399), ms(60), np.nan],
        "ttft_ms": [10.0, 20.0, 30.0, 50.0, 5.0, np.nan, 99.0],
    })
    table = insight_db.first_token_latency_table(requests)
    assert list(table.columns) == list(insight_db.FIRST_TOKEN_COLUMNS)
    # Windows of 100 ms from the first arrival: [10, 20], [30, 50], none, [5]. The request
    # without a TTFT and the one without an arrival are left out (not counted as 0).
    assert list(table["timestamp"]) == [stamp(0), stamp(100), stamp(300)]
    np.testing.assert_allclose(table["p50"], [15.0, 40.0, 5.0])
    np.testing.assert_allclose(table["p90"], [19.0, 48.0, 5.0])  # 10 + 0.9 * 10; 30 + 0.9 * 20
    np.testing.assert_allclose(table["p99"], [19.9, 49.8, 5.0])
    np.testing.assert_allclose(table["min_value"], [10.0, 30.0, 5.0])
    np.testing.assert_allclose(table["p50_alltime"], [20.0] * 3)  # median of 5, 10, 20, 30, 50


def test_request_latency_cumulative_by_hand():
    requests = pd.DataFrame({
        "end_us": [ms(3), ms(1), ms(2), ms(4), ms(5)],
        "e2e_ms": [20.0, 10.0, 30.0, np.nan, 40.0],
    })
    table = insight_db.request_latency_table(requests, points=2)
    assert list(table.columns) == list(insight_db.REQ_LATENCY_COLUMNS)
    # By end: 10 (1 ms), 30 (2 ms), 20 (3 ms), 40 (5 ms); every 4 // 2 = 2nd request.
    assert list(table["timestamp"]) == [stamp(2), stamp(5)]
    np.testing.assert_allclose(table["avg"], [20.0, 25.0])
    np.testing.assert_allclose(table["p50"], [20.0, 25.0])
    np.testing.assert_allclose(table["p90"], [28.0, 37.0])  # [10,20,30,40]: 30 + 0.7 * 10
    np.testing.assert_allclose(table["p99"], [29.8, 39.7])
    np.testing.assert_allclose(table["p50_alltime"], [25.0, 25.0])


def test_generation_speed_by_hand():
    batches = pd.DataFrame({
        "sched_start_us": [ms(0), ms(50), ms(120), ms(130), ms(200)],
        "exec_end_us": [ms(10), ms(60), ms(124), np.nan, ms(200)],
        "Prefill_scheduled_tokens": [100, 0, 20, 5, 1],
        "Decode_scheduled_tokens": [0, 4, 2, 0, 0],
    })
    # Prefill: 100 tokens / 10 ms = 10,000/s at 0 ms; 20 / 4 ms = 5,000/s at 120 ms. The step
    # without an execution end and the one of zero length are left out.
    prefill = insight_db.generation_speed_table(batches, "Prefill")
    assert list(prefill.columns) == list(insight_db.GEN_SPEED_COLUMNS)
    assert list(prefill["timestamp"]) == [stamp(0), stamp(100)]
    np.testing.assert_allclose(prefill["avg"], [10_000.0, 5_000.0])
    np.testing.assert_allclose(prefill["p50_alltime"], [7_500.0] * 2)
    # Decode: 4 / 10 ms = 400/s at 50 ms, 2 / 4 ms = 500/s at 120 ms: one window from 50 ms.
    decode = insight_db.generation_speed_table(batches, "Decode")
    assert list(decode["timestamp"]) == [stamp(50)]
    np.testing.assert_allclose(decode[["avg", "p50", "p90", "p99"]].to_numpy()[0],
                               [450.0, 450.0, 490.0, 499.0])
    assert insight_db.generation_speed_table(pd.DataFrame(), "Decode").empty


def test_latency_tables_without_values_are_empty():
    for requests in (pd.DataFrame(), pd.DataFrame({"arrival_us": [ms(1)],
                                                   "ttft_ms": [np.nan],
                                                   "end_us": [np.nan], "e2e_ms": [3.0]})):
        assert insight_db.first_token_latency_table(requests).empty
        assert insight_db.request_latency_table(requests).empty


def test_registry_and_curves_only_where_the_source_exists():
    conn = sqlite3.connect(":memory:")
    made = insight_db.write_insight_tables(conn, pd.DataFrame())
    # No request/batch/kvcache tables: the latency tables exist (empty), with their curves.
    assert made == ["First_Token_Latency_curve", "Request_Latency_curve",
                    "Prefill_Generate_Speed_Latency_curve",
                    "Decode_Generate_Speed_Latency_curve"]
    assert conn.execute("SELECT COUNT(*) FROM data_table").fetchone() == (0,)
    assert conn.execute('SELECT COUNT(*) FROM "Request_Latency_curve"').fetchone() == (0,)
    assert {r[0] for r in conn.execute("SELECT key FROM translate")} == set(made)


def test_request_status_curve_when_a_queue_table_exists():
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE request_status (start_datetime TEXT, waiting REAL,"
                 " running REAL, swapped REAL)")
    conn.executemany("INSERT INTO request_status VALUES (?, ?, ?, ?)", [
        (stamp(2.0), None, 3.0, None), (stamp(1.0), 5.0, None, None)])
    assert "Request_Status_curve" in insight_db.write_insight_tables(conn, pd.DataFrame())
    assert query(conn, 'SELECT * FROM "Request_Status_curve"') == (
        ["time", "waiting", "swapped", "running"],
        [(stamp(1.0)[:26], 5.0, None, None), (stamp(2.0)[:26], None, None, 3.0)])


# ----------------------------------------------------------------------------- profiler.db

@pytest.fixture(scope="module")
def golden_db(tmp_path_factory):
    root = tmp_path_factory.mktemp("insight")
    golden_capture().write(root / "in")
    assert analyze_main(["--input-path", str(root / "in"), "--output-path", str(root / "out"),
                         "--format", "db"]) == 0
    conn = sqlite3.connect(root / "out" / "profiler.db")
    yield conn
    conn.close()


def query(conn, sql):
    cursor = conn.execute(sql)
    return [d[0] for d in cursor.description], cursor.fetchall()


def test_registry_tables(golden_db):
    columns = [(r[1], r[2]) for r in golden_db.execute("PRAGMA table_info(data_table)")]
    assert columns == [("id", "INTEGER"), ("name", "TEXT"), ("view_name", "TEXT")]
    assert golden_db.execute("SELECT * FROM data_table ORDER BY id").fetchall() == [
        (1, "request_data", "request_data"), (2, "batch_info", "batch_info"),
        (3, "kvcache_usage", "kvcache_usage")]
    columns = [(r[1], r[2], r[3], r[5]) for r in golden_db.execute("PRAGMA table_info(translate)")]
    assert columns == [("key", "TEXT", 1, 1), ("value_en", "TEXT", 0, 0),
                       ("value_zh", "TEXT", 0, 0)]
    keys = {r[0]: (r[1], r[2]) for r in golden_db.execute("SELECT * FROM translate")}
    assert set(keys) == {"request_data", "batch_info", "kvcache_usage", "Batch_Size_curve",
                         "Batch_Token_curve", "Kvcache_Usage_Percent_curve",
                         "First_Token_Latency_curve", "Request_Latency_curve",
                         "Prefill_Generate_Speed_Latency_curve",
                         "Decode_Generate_Speed_Latency_curve",
                         # the capture's Enqueue/Dequeue records give request_status its rows
                         "Request_Status_curve"}
    assert golden_db.execute('SELECT COUNT(*) FROM "Request_Status_curve"').fetchone()[0] > 0
    assert all(en and zh for en, zh in keys.values())
    # Every registered name is a view of the database.
    views = {r[0] for r in golden_db.execute("SELECT name FROM sqlite_master WHERE type='view'")}
    assert set(keys) <= views


def test_batch_curves(golden_db):
    assert query(golden_db, 'SELECT * FROM "Batch_Size_curve"') == (
        ["batch_id", "total_batch_size", "prefill_batch_size", "decode_batch_size"],
        [(0, 1, 1, 0), (1, 2, 1, 1), (2, 1, 0, 1)])
    assert query(golden_db, 'SELECT * FROM "Batch_Token_curve"') == (
        ["batch_id", "total_scheduled_tokens", "prefill_scheduled_tokens",
         "decode_scheduled_tokens"],
        [(0, 10, 10, 0), (1, 7, 6, 1), (2, 1, 0, 1)])


def test_kvcache_curve(golden_db):
    columns, rows = query(golden_db, 'SELECT * FROM "Kvcache_Usage_Percent_curve"')
    assert columns == ["datetime", "kvcache_usage_percent"]
    assert [r[0] for r in rows] == [stamp(t)[:26] for t in (2.45, 10.35, 15.5, 17.1, 20.5)]
    np.testing.assert_allclose([r[1] for r in rows], [2.0, 3.0, 1.0, 1.0, 0.0])


def test_first_token_latency_table_and_curve(golden_db):
    # Both arrivals (0.0 and 4.0 ms) fall in the first 100 ms window: TTFT 9.0 and 12.5.
    columns, rows = query(golden_db, "SELECT * FROM first_token_latency")
    assert columns == list(insight_db.FIRST_TOKEN_COLUMNS)
    assert len(rows) == 1 and rows[0][0] == stamp(0)
    np.testing.assert_allclose(rows[0][1:], [10.75, 12.15, 12.465, 9.0, 10.75], atol=1e-3)
    columns, rows = query(golden_db, 'SELECT * FROM "First_Token_Latency_curve"')
    assert columns == ["time", "p99(ms)", "p90(ms)", "p50(ms)", "min(ms)"]
    assert rows[0][0] == "2026-01-01 00:00:00.000000"
    np.testing.assert_allclose(rows[0][1:], [12.465, 12.15, 10.75, 9.0], atol=1e-3)


def test_request_latency_table_and_curve(golden_db):
    # A ends at 16.0 ms (e2e 16.0), B at 21.0 ms (e2e 17.0): one row after each.
    columns, rows = query(golden_db, "SELECT * FROM req_latency")
    assert columns == list(insight_db.REQ_LATENCY_COLUMNS)
    assert [r[0] for r in rows] == [stamp(16.0), stamp(21.0)]
    np.testing.assert_allclose(rows[0][1:], [16.0, 16.0, 16.0, 16.0, 16.5], atol=1e-3)
    np.testing.assert_allclose(rows[1][1:], [16.5, 16.5, 16.9, 16.99, 16.5], atol=1e-3)
    columns, rows = query(golden_db, 'SELECT * FROM "Request_Latency_curve"')
    assert columns == ["time", "avg(ms)", "p99(ms)", "p90(ms)", "p50(ms)"]
    assert [r[0] for r in rows] == ["2026-01-01 00:00:00.016000", "2026-01-01 00:00:00.021000"]
    assert math.isclose(rows[1][2], 16.99, abs_tol=1e-3)


def test_generation_speed_tables_and_curves(golden_db):
    # Steps (schedule start -> execution end): 2.0-8.0 ms prefill 10 tokens (1666.667/s);
    # 10.0-15.0 prefill 6 (1200/s) and decode 1 (200/s); 17.0-20.0 decode 1 (333.333/s).
    columns, rows = query(golden_db, "SELECT * FROM prefill_gen_speed")
    assert columns == list(insight_db.GEN_SPEED_COLUMNS)
    assert len(rows) == 1 and rows[0][0] == stamp(2.0)
    # avg, p50, p90 (1200 + 0.9 * 466.667), p99, p50_alltime
    # (instants resolve 0.25 µs: a 3-6 ms step time is exact to about 1e-4, hence rtol)
    np.testing.assert_allclose(rows[0][1:], [1433.333, 1433.333, 1620.0, 1662.0, 1433.333],
                               rtol=5e-4)
    columns, rows = query(golden_db, 'SELECT * FROM "Decode_Generate_Speed_Latency_curve"')
    assert columns == ["time", "avg(tokens/s)", "p99(tokens/s)", "p90(tokens/s)",
                       "p50(tokens/s)"]
    assert rows[0][0] == stamp(10.0)[:26]
    np.testing.assert_allclose(rows[0][1:], [266.667, 332.0, 320.0, 266.667], rtol=5e-4)


def test_existing_tables_still_there(golden_db):
    names = {r[0] for r in golden_db.execute("SELECT name FROM sqlite_master")}
    assert {"request", "batch", "kvcache", "request_data", "batch_info", "kvcache_usage",
            "data_link", "slice", "flow"} <= names
