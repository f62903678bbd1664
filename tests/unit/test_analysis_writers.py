"""``write_csv``'s own quoting of long text columns gives exactly pandas' bytes."""

from __future__ import annotations

import sqlite3
import string

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_vllm_ascend.analysis import writers

# Characters that matter to CSV quoting, plus ordinary ones.
CELL_TEXT = st.text(alphabet=string.ascii_letters + string.digits + ',"\' []{}:', max_size=120)
SHORT_OR_MISSING = st.one_of(st.none(), st.just(""), st.text(alphabet='ab,"\n', max_size=6),
                             st.floats(allow_nan=True, allow_infinity=False, width=32))


def _pandas_bytes(tmp_path, table: pd.DataFrame) -> bytes:
    path = tmp_path / "pandas.csv"
    table.round(writers.DECIMALS).to_csv(path, index=False)
    return path.read_bytes()


def _ours(tmp_path, table: pd.DataFrame) -> bytes:
    return writers.write_csv(tmp_path / "ours.csv", table, list(table.columns)).read_bytes()


def _res_list(n_requests: int) -> str:
    return repr([{"rid": f"cmpl-{i}", "iter": i, "type": i % 2} for i in range(n_requests)])


def test_long_text_column_is_taken_by_the_fast_path(tmp_path, monkeypatch):
    table = pd.DataFrame({"name": ["step"] * 3, "res_list": [_res_list(4)] * 3,
                          "ms": [1.25, np.nan, 3.0]})
    assert writers._long_text_column(table) == 1
    calls = []
    real = writers._csv_with_text_column
    monkeypatch.setattr(writers, "_csv_with_text_column",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    assert _ours(tmp_path, table) == _pandas_bytes(tmp_path, table)
    assert calls, "the long text column should have been quoted by write_csv itself"


@settings(max_examples=60, deadline=None)
@given(cells=st.lists(CELL_TEXT, min_size=1, max_size=12), data=st.data(),
       position=st.integers(0, 3), n_others=st.integers(0, 3))
def test_same_bytes_as_pandas(tmp_path_factory, cells, data, position, n_others):
    tmp_path = tmp_path_factory.mktemp("csv")
    # Long enough on average to take the fast path; the other columns hold tricky short cells.
    cells = [cell + "x" * writers.LONG_TEXT_CHARS for cell in cells]
    columns = {}
    for k in range(n_others):
        columns[f"c{k}"] = data.draw(st.lists(SHORT_OR_MISSING, min_size=len(cells),
                                              max_size=len(cells)))
    names = list(columns)
    names.insert(min(position, len(names)), "res,list")
    columns["res,list"] = cells
    table = pd.DataFrame({name: columns[name] for name in names})
    assert _ours(tmp_path, table) == _pandas_bytes(tmp_path, table)


def test_chunks_and_a_line_break_on_the_side_fall_back_exactly(tmp_path, monkeypatch):
    monkeypatch.setattr(writers, "CSV_CHUNK_ROWS", 2)
    table = pd.DataFrame({"name": ["a", "two\nlines", None, ""],
                          "res_list": [_res_list(3)] * 4, "n": [1, 2, 3, 4]})
    assert _ours(tmp_path, table) == _pandas_bytes(tmp_path, table)


def test_text_with_line_breaks_is_left_to_pandas(tmp_path):
    table = pd.DataFrame({"res_list": [_res_list(3) + "\n"] * 2, "n": [1, 2]})
    assert writers._long_text_column(table) is None
    assert _ours(tmp_path, table) == _pandas_bytes(tmp_path, table)


def test_empty_table_keeps_its_header(tmp_path):
    table = pd.DataFrame({"name": pd.Series([], dtype=object),
                          "res_list": pd.Series([], dtype=object)})
    assert _ours(tmp_path, table) == _pandas_bytes(tmp_path, table)


def _insert_into_fresh_table(rows, **kwargs) -> list:
    import sqlite3

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, b INTEGER, c TEXT)")
    writers._insert_rows(conn, "INSERT INTO t (a, b, c)", "(?, ?, 'k')", 2, rows, **kwargs)
    return conn.execute("SELECT id, a, b, c, typeof(a) FROM t ORDER BY id").fetchall()


def test_multi_row_inserts_keep_order_ids_and_types():
    # 100-row statements plus a remainder; integer flow ids land as text (TEXT affinity).
    n = writers.ROWS_PER_INSERT * 3 + 7
    got = _insert_into_fresh_table((i * 3, -i) for i in range(n))
    assert got == [(i + 1, str(i * 3), -i, "k", "text") for i in range(n)]


def test_rows_of_another_width_fall_back_to_one_statement_per_row():
    import sqlite3

    rows = [(str(i), i) for i in range(writers.ROWS_PER_INSERT)]
    rows[5] = ("short",)
    try:
        _insert_into_fresh_table(rows)
    except sqlite3.ProgrammingError as exc:  # the bad row is reported, not shifted silently
        assert "bindings" in str(exc)
    else:
        raise AssertionError("a row of the wrong width was accepted")


@pytest.mark.parametrize("separators", [(",", ":"), (", ", ": ")])
def test_reusable_encoder_is_the_standard_encoding(separators):
    import json

    from otel_vllm_ascend.json_encoding import make_encoder

    dumps = make_encoder(*separators)
    for value in ({"a": [1, 2.5, None, True], "é": "ü\n", "n": float("nan")}, {},
                  {"x": {"y": [float("inf"), -0.0, 1e-07, 10**20]}}, {1: "int key"}):
        assert dumps(value) == json.dumps(value, separators=separators)


def _stored(table: pd.DataFrame, store=writers.store_table) -> tuple:
    import sqlite3

    conn = sqlite3.connect(":memory:")
    store(conn, "t", table)
    schema = conn.execute("SELECT sql FROM sqlite_master WHERE name = 't'").fetchone()[0]
    rows = conn.execute('SELECT *, ' + ", ".join(f'typeof("{c}")' for c in table.columns)
                        + ' FROM "t" ORDER BY rowid').fetchall()
    return schema, rows


@pytest.mark.parametrize("chunk", [1, 2, 3, 1000])
def test_profiler_db_tables_stored_in_chunks_as_in_one_piece(monkeypatch, chunk):
    # Each object column's type is the whole column's, even where a chunk of it alone
    # (all None, only ints) would get another one; and the stored values are the same.
    def cells(*values):
        return pd.Series(values, dtype=object)

    table = pd.DataFrame({
        "late_int": cells(None, None, None, 4, 5),
        "int_then_float": cells(1, 2, 3, 4.5, None),
        "int_then_text": cells(1, 2, 3, 4, "x"),
        "lists": cells([1], None, [2, 3], [], [4]),
        "huge": cells(1, 2, 3, 4, 2**70),
        "flags": cells(True, None, False, True, True),
        "none": cells(None, None, None, None, None),
        "ints": np.arange(5),
        "floats": [0.5, np.nan, 1.5, 2.0, np.nan],
        "text": cells("a", None, "b", "c", "d"),
    })
    # The reference: the whole table's copy stored in one piece.
    def whole_of(t):
        return _stored(t, lambda conn, name, t: writers.store_rows(conn, name, t, "replace"))

    whole = whole_of(table)
    assert '"late_int" REAL' in whole[0] and '"int_then_text" TEXT' in whole[0]
    monkeypatch.setattr(writers, "DB_CHUNK_ROWS", chunk)
    assert _stored(table) == whole
    assert _stored(table.iloc[:0]) == whole_of(table.iloc[:0])


def _db_dump(path):
    conn = sqlite3.connect(path)
    schema = conn.execute("SELECT type, name, sql FROM sqlite_master ORDER BY name").fetchall()
    rows = {name: sorted(map(repr, conn.execute(f'SELECT * FROM "{name}"')))
            for kind, name, _ in schema if kind == "table"}
    conn.close()
    return schema, rows


@pytest.mark.parametrize("with_trace", [True, False])
def test_profiler_db_in_two_halves_is_the_one_written_at_once(tmp_path, with_trace):
    """The tables written by one process (write_profiler_tables), the trace's added by another
    (finish_profiler_db), as the CLI does with the report: the same database."""
    import multiprocessing

    requests = pd.DataFrame({"http_rid": ["a", "b"], "recv_token_size": [3.0, 4.0],
                             "cache_hit_rate": ["N/A", 0.5]})
    batches = pd.DataFrame({"batch_type": ["Prefill"], "total_batch_size": [2.0]})
    kvcache = pd.DataFrame({"name": ["kv"], "used_blocks": [7]})
    summaries = {"service_summary": pd.DataFrame({"Metric": ["x"], "Value": [1.0]})}
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "p"}},
              {"ph": "X", "name": "s", "pid": 1, "tid": 2, "ts": 1.0, "dur": 2.0, "args": {}}]
    tables = ((requests, list(requests.columns)), (batches, list(batches.columns)),
              (kvcache, list(kvcache.columns)), summaries)
    trace = events if with_trace else None
    writers.write_profiler_db(tmp_path / "one.db", *tables, trace, 5.0)
    child = multiprocessing.get_context("fork").Process(
        target=writers.write_profiler_tables, args=(tmp_path / "two.db", *tables))
    child.start()
    child.join()
    assert child.exitcode == 0 and not (tmp_path / "two.db").exists()
    assert writers.finish_profiler_db(tmp_path / "two.db", trace, 5.0) == tmp_path / "two.db"
    assert not (tmp_path / "two.db.tmp").exists()
    one, two = _db_dump(tmp_path / "one.db"), _db_dump(tmp_path / "two.db")
    assert one == two and ("slice" in one[1]) == with_trace


def _db_in_order(path):
    """sqlite_master and every table's rows with their rowids, in the file's own order."""
    conn = sqlite3.connect(path)
    schema = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    rows = {name: conn.execute(f'SELECT rowid, * FROM "{name}"').fetchall()
            for kind, name, _, _ in schema if kind == "table"}
    conn.close()
    return schema, rows


def test_the_trace_tables_written_apart_and_copied_in_are_those_written_in_place(tmp_path):
    """The CLI's forked path: the tables written by one process, the trace's by another into
    a file of their own (write_trace_part), copied in by finish_profiler_db: the same schema
    in the same order, the same rows with the same rowids; the part's file is gone."""
    import multiprocessing

    requests = pd.DataFrame({"http_rid": ["a", "b"], "recv_token_size": [3.0, 4.0]})
    summaries = {"service_summary": pd.DataFrame({"Metric": ["x"], "Value": [1.0]})}
    batches = pd.DataFrame({"batch_type": ["Prefill"], "total_batch_size": [2.0]})
    kvcache = pd.DataFrame({"name": ["kv"], "used_blocks": [7]})
    tables = ((requests, list(requests.columns)), (batches, list(batches.columns)),
              (kvcache, list(kvcache.columns)), summaries)
    events = [{"ph": "M", "name": "process_name", "pid": 1, "args": {"name": "p"}},
              {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "t"}},
              {"ph": "X", "name": "s", "pid": 1, "tid": 2, "ts": 1.0, "dur": 2.0,
               "args": {"k": [1, "x"]}},
              {"ph": "i", "name": "e", "pid": 1, "tid": 3, "ts": 4.5, "cat": "c"},
              {"ph": "C", "name": "KV cache", "pid": 1, "ts": 2.0, "args": {"usage": 0.5}},
              {"ph": "s", "name": "request", "cat": "request", "id": 7, "pid": 1, "tid": 2,
               "ts": 1.001},
              {"ph": "f", "name": "request", "cat": "request", "id": 7, "pid": 9, "tid": 1,
               "ts": 3.0, "bp": "e"}]
    writers.write_profiler_db(tmp_path / "one.db", *tables, events, 5.0)
    child = multiprocessing.get_context("fork").Process(
        target=writers.write_profiler_tables, args=(tmp_path / "two.db", *tables))
    child.start()
    part = writers.write_trace_part(tmp_path / "two.db", events, 5.0)
    child.join()
    assert child.exitcode == 0 and part.exists() and not (tmp_path / "two.db").exists()
    assert writers.finish_profiler_db(tmp_path / "two.db", None, 0.0, part) \
        == tmp_path / "two.db"
    assert not part.exists() and not (tmp_path / "two.db.tmp").exists()
    one, two = _db_in_order(tmp_path / "one.db"), _db_in_order(tmp_path / "two.db")
    assert one == two
    assert [len(one[1][name]) for name in ("process", "thread", "slice", "counter", "flow")] \
        == [1, 3, 2, 1, 2]


def test_a_trace_part_that_fails_leaves_no_file(tmp_path, monkeypatch):
    def fail(conn, events, origin_us):
        conn.execute("CREATE TABLE slice (id INTEGER)")
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(writers, "_write_trace_tables", fail)
    with pytest.raises(sqlite3.OperationalError):
        writers.write_trace_part(tmp_path / "p.db", [], 0.0)
    assert list(tmp_path.iterdir()) == []
