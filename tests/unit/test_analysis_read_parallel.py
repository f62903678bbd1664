"""Reading on several cores (analysis/read_parallel.py) gives the serial reader's frame.

The thresholds are lowered so that the small captures of these tests are split into rowid
ranges of a few rows each and read by worker processes.
"""

import multiprocessing
import os
import pickle
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import Capture, simulate_service  # noqa: E402

from otel_vllm_ascend.analysis import read_parallel, rid_detail  # noqa: E402
from otel_vllm_ascend.analysis.readers import find_captures, read_captures  # noqa: E402

pytestmark = pytest.mark.skipif(
    "fork" not in multiprocessing.get_all_start_methods() or sys.version_info < (3, 11),
    reason="the parallel reader needs fork and Python 3.11")


@pytest.fixture(autouse=True)
def small_tasks(monkeypatch):
    monkeypatch.delenv("OTEL_VLLM_ANALYZE_SERIAL", raising=False)
    monkeypatch.setattr(read_parallel, "MIN_ROWS", 1)
    monkeypatch.setattr(read_parallel, "RANGE_ROWS", 7)
    monkeypatch.setattr(read_parallel, "worker_count", lambda: 2)


def _serial(folder, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setenv("OTEL_VLLM_ANALYZE_SERIAL", "1")
        patch.setattr(read_parallel, "worker_count", lambda: 1)
        return read_captures(folder)


def _same(left, right):
    """Frames equal value for value (``repr``: object columns, -0.0, NaN), processes, report."""
    (frame_a, procs_a, report_a), (frame_b, procs_b, report_b) = left, right
    assert list(frame_a.columns) == list(frame_b.columns)
    assert list(frame_a.dtypes) == list(frame_b.dtypes)
    for column in frame_a.columns:
        assert [repr(v) for v in frame_a[column].tolist()] == \
            [repr(v) for v in frame_b[column].tolist()], column
    assert [vars(p) for p in procs_a] == [vars(p) for p in procs_b]
    assert vars(report_a) == vars(report_b)


def _parallel(folder):
    """The parallel reader's result (asserting it did not hand back to the serial one)."""
    paths = [c.path for c in find_captures(folder)]
    done = read_parallel.read_files(paths, 2)
    assert done is not None
    return done


@pytest.mark.parametrize("layout,encoding", [("per_process", "json"), ("per_thread", "caret"),
                                             ("trace_service", "caret")])
def test_parallel_frame_is_the_serial_one(tmp_path, monkeypatch, layout, encoding):
    simulate_service(30, seed=3, max_batch=5).capture.write(tmp_path, layout, encoding)
    serial = _serial(tmp_path, monkeypatch)
    assert len(serial[0]) > 100
    _same(_parallel(tmp_path), serial)
    _same(read_captures(tmp_path), serial)


def test_two_hosts_and_links_read_after_their_records(tmp_path, monkeypatch):
    # The engine's file (pid 50) is read before the API server's (pid 100) that holds the
    # links: the serial reader maps its ids at the end, the parallel one after the merge.
    simulate_service(20, seed=1, host="node-a", api_pid=100, engine_pid=50).capture.write(
        tmp_path / "a")
    simulate_service(20, seed=2, host="node-b", api_pid=100, engine_pid=300).capture.write(
        tmp_path / "b", layout="per_thread", encoding="caret")
    folders = [tmp_path / "a", tmp_path / "b"]
    serial = _serial(folders, monkeypatch)
    assert {p.host for p in serial[1]} == {"node-a", "node-b"}
    _same(read_captures(folders), serial)


def test_order_dependent_links_are_read_serially(tmp_path, monkeypatch):
    cap = Capture()
    api = cap.process("h", 1, "api_server")
    engine = cap.process("h", 2, "engine_core")
    for i in range(12):
        engine.event("Enqueue", 1.7e15 + 10 * i, "Schedule", ["int-1"], **{"QueueSize=": i})
    api.link(1.7e15 + 5, "ext-1", "int-1")
    api.link(1.7e15 + 50, "ext-2", "int-1")  # the same internal id linked twice
    cap.write(tmp_path)
    assert read_parallel.read_files([c.path for c in find_captures(tmp_path)], 2) is None
    _same(read_captures(tmp_path), _serial(tmp_path, monkeypatch))


def test_damaged_file_is_salvaged_as_the_serial_reader_does(tmp_path, monkeypatch):
    sim = simulate_service(40, seed=4)
    paths = sim.capture.write(tmp_path)
    engine = max(paths, key=lambda p: p.stat().st_size)
    data = engine.read_bytes()
    engine.write_bytes(data[: len(data) * 2 // 3])
    serial = _serial(tmp_path, monkeypatch)
    assert any("damage" in problem for problem in serial[2].problems)
    _same(_parallel(tmp_path), serial)


def test_a_failing_worker_is_named_and_its_file_read_here(tmp_path, monkeypatch):
    paths = simulate_service(20, seed=5).capture.write(tmp_path)
    serial = _serial(tmp_path, monkeypatch)
    broken = paths[1]
    read_range = read_parallel._read_range

    def failing(task):
        if task.path == broken:
            raise RuntimeError("boom")
        return read_range(task)

    monkeypatch.setattr(read_parallel, "_read_range", failing)  # forked workers inherit it
    frame, processes, report = _parallel(tmp_path)
    assert report.problems == [f"{broken}: reading in a worker process failed (RuntimeError:"
                               " boom); read again in this process"]
    report.problems = []
    _same((frame, processes, report), serial)


def test_a_worker_that_dies_leaves_its_files_to_this_process(tmp_path, monkeypatch):
    paths = simulate_service(20, seed=6).capture.write(tmp_path)
    serial = _serial(tmp_path, monkeypatch)
    read_range = read_parallel._read_range

    def dying(task):
        if task.path == paths[1]:
            os._exit(3)
        return read_range(task)

    monkeypatch.setattr(read_parallel, "_read_range", dying)
    frame, processes, report = _parallel(tmp_path)
    assert report.problems and all("read again in this process" in p for p in report.problems)
    assert any(str(paths[1]) in p for p in report.problems)
    report.problems = []
    _same((frame, processes, report), serial)


def test_serial_switch(monkeypatch):
    monkeypatch.undo()
    monkeypatch.setenv("OTEL_VLLM_ANALYZE_SERIAL", "1")
    assert read_parallel.worker_count() == 1


def test_request_detail_unpickled_in_a_process_that_never_made_one(monkeypatch):
    items = [{"rid": "a", "iter": 0, "odd key": 7}, {"rid": "b", "iter": 1, "odd key": 8}]
    detail = rid_detail.compact([dict(i) for i in items], ["a", "b"])
    data = pickle.dumps(detail)
    monkeypatch.setattr(rid_detail, "_schemas", {})
    copy = pickle.loads(data)
    assert repr(copy) == repr(items) and list(copy) == items
    assert copy.column("odd key").tolist() == [7, 8]


def test_parts_text_and_type_columns_join_as_the_whole_column_builds():
    """Each part's text column sent as category codes, joined by the union of categories:
    the Categorical the frame's build makes of the whole column (sorted categories); a part
    read here on failure may send lists; types join as one nullable integer array, or as a
    list when a part's could not be one."""
    import pandas as pd

    parts = [["b", "a", "b"], [], ["c", "a"], ["a"]]
    sent = [pd.Categorical(p) for p in parts[:2]] + [parts[2], pd.Categorical(parts[3])]
    joined = read_parallel._join_texts(sent)
    whole = pd.Categorical([v for p in parts for v in p])
    assert joined.tolist() == whole.tolist()
    assert joined.categories.equals(whole.categories) and joined.codes.dtype == whole.codes.dtype
    assert read_parallel._join_texts([pd.Categorical([]), []]) == []
    types = [pd.array([2, None], dtype="Int64"), pd.array([], dtype="Int64"),
             pd.array([0], dtype="Int64")]
    assert read_parallel._join_types(types).tolist() == [2, pd.NA, 0]
    assert read_parallel._join_types([types[0], [2 ** 70]]) == [2, pd.NA, 2 ** 70]
