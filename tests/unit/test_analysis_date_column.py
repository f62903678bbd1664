"""The output tables' datetime columns held as whole µs (date_cells.DateColumn): the same
cells as writers.lazy_datetimes_us makes, and the same CSV file and profiler.db table."""

import sqlite3

import numpy as np
import pandas as pd
import pytest
from datetime_values import datetime_values

from otel_vllm_ascend.analysis import writers
from otel_vllm_ascend.analysis.date_cells import DateColumn, datetime_column_us
from otel_vllm_ascend.analysis.frame import format_datetime_us
from otel_vllm_ascend.analysis.writers import NO_DATE, lazy_datetimes_us, store_table, write_csv


@pytest.mark.parametrize("seed", range(3))
def test_cells_are_those_of_lazy_datetimes_us(seed):
    values = datetime_values(seed)
    column = datetime_column_us(values)
    cells = lazy_datetimes_us(values)
    assert len(column) == len(values)
    assert [str(c) for c in column.tolist()] == [str(c) for c in cells]
    assert [type(c) for c in column.tolist()] == [type(c) for c in cells]
    assert all(column[int(i)] is NO_DATE for i in np.flatnonzero(~np.isfinite(values)))
    assert [str(c) for c in column.to_numpy()] == format_datetime_us(values).tolist()
    assert column.nbytes == 9 * len(values)


def test_a_column_survives_what_the_tables_go_through():
    values = np.array([1.7e15, np.nan, 1.7e15 + 2.5, 0.0])
    table = pd.DataFrame({"t": datetime_column_us(values), "k": [3, 1, 2, 0]})
    assert isinstance(table["t"].array, DateColumn)
    ordered = table.sort_values("k", kind="stable").reset_index(drop=True)
    expected = lazy_datetimes_us(values[[3, 1, 2, 0]])
    assert [str(c) for c in ordered["t"]] == [str(c) for c in expected]
    picked = table.loc[np.array([True, False, True, False])]
    assert [str(c) for c in picked["t"]] == [str(c) for c in lazy_datetimes_us(values[[0, 2]])]
    assert table["t"].iloc[1] == ""  # an unknown time: the empty cell
    joined = pd.concat([table, table], ignore_index=True)
    assert isinstance(joined["t"].array, DateColumn) and len(joined) == 8
    assert not table["t"].isna().any()  # an empty cell, not a missing value (as before)
    assert isinstance(table.round(6)["t"].array, DateColumn)


@pytest.mark.parametrize("chunk", [3, 2000])
def test_written_and_stored_as_the_object_column(tmp_path, monkeypatch, chunk):
    monkeypatch.setattr(writers, "DB_CHUNK_ROWS", chunk)
    monkeypatch.setattr(writers, "CSV_CHUNK_ROWS", chunk)
    values = datetime_values(5)
    n = len(values)
    base = {"n": np.arange(n, dtype=float), "x": np.linspace(0, 1, n),
            "hit": pd.Series([None] * 4 + [0.5] * (n - 4), dtype=object)}
    objects = pd.DataFrame({"t": lazy_datetimes_us(values), **base,
                            "u": lazy_datetimes_us(values[::-1])})
    column = pd.DataFrame({"t": datetime_column_us(values), **base,
                           "u": datetime_column_us(values[::-1])})
    columns = ["n", "t", "x", "hit", "u"]
    write_csv(tmp_path / "a.csv", objects, columns)
    write_csv(tmp_path / "b.csv", column, columns)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    dumps = []
    for name, table in (("a", objects), ("b", column)):
        conn = sqlite3.connect(tmp_path / f"{name}.db")
        store_table(conn, "batch", table)
        conn.commit()
        dumps.append((conn.execute("SELECT sql FROM sqlite_master").fetchall(),
                      conn.execute("SELECT n, t, typeof(t), x, hit, typeof(hit), u, typeof(u)"
                                   " FROM batch").fetchall()))
        conn.close()
    assert dumps[0] == dumps[1]
