"""Records frame: message decoding and request-id mapping."""

import math

import pandas as pd
import pytest

from otel_vllm_ascend.analysis.frame import (
    RECORD_COLUMNS,
    ProcessInfo,
    RecordBuilder,
    empty_frame,
    format_datetime_us,
    guess_role,
    parse_message,
)


@pytest.mark.parametrize("text, expected", [
    ('{"domain": "Engine", "rid": "a", "QueueSize=": 3}',
     {"domain": "Engine", "rid": "a", "QueueSize=": 3}),
    ("^domain^:^npu^,^usage=^:28004,^scope#device^:0,",
     {"domain": "npu", "usage=": 28004, "scope#device": 0}),
    ("^name^:^x^,^UsagePercent=^:0.500000,^rid^:[{^rid^:^r1^,^iter^:0}],",
     {"name": "x", "UsagePercent=": 0.5, "rid": [{"rid": "r1", "iter": 0}]}),
    ("{^name^:^braced^}", {"name": "braced"}),
    ('{"v": NaN}', None),  # Python's json.dumps writes NaN: accepted, checked below
])
def test_parse_message(text, expected):
    got = parse_message(text)
    if expected is None:
        assert math.isnan(got["v"])
    else:
        assert got == expected


@pytest.mark.parametrize("text", ["", "garbage", "^a^:", "[1, 2]", "{\"a\": 1", None, 5])
def test_parse_message_rejects(text):
    assert parse_message(text) is None


def test_message_keys_are_split_by_kind():
    b = RecordBuilder()
    b.add("s", 1, 1, 0, 1.0, 3.0, {"name": "n", "domain": "d", "type": 2, "rid": 7,
                                   "a=": 1, "b+": "2", "scope#Q": "W", "pid": 9,
                                   "start_us": "x", "batch_type": "Decode"}, dur_us=2.0)
    f = b.build([ProcessInfo("h", 1, "", None, ["s"])])
    row = f.iloc[0]
    assert list(f.columns) == list(RECORD_COLUMNS)
    assert row["rids"] == ["7"] and row["rid_detail"] is None
    assert row["metrics"] == {"a": 1.0} and row["metric_incs"] == {"b": 2.0}
    assert row["scopes"] == {"Q": "W"}
    assert row["attrs"] == {"pid": 9, "start_us": "x"}
    assert row["pid"] == 1 and row["start_us"] == 1.0 and row["dur_us"] == 2.0
    assert row["batch_type"] == "Decode" and row["type"] == 2


def detail(rid, it):
    return [{"rid": rid, "iter": it, "type": 1}]


def add_in_order(link_first, api, engine):
    """The API server's file (with the link) read before or after the engine's."""
    for part in (api, engine) if link_first else (engine, api):
        part()


@pytest.mark.parametrize("link_first", [True, False])
def test_internal_ids_mapped_whichever_file_comes_first(link_first):
    b = RecordBuilder()

    def api():
        b.add("api", 1, 1, 0, 5.0, 5.0, {"name": "link", "type": 3, "from": "ext",
                                         "to": "int"})
        b.add("api", 1, 1, 1, 1.0, 1.0, {"name": "httpReq", "rid": "ext"})

    def engine():
        b.add("ec", 2, 2, 0, 6.0, 7.0, {"name": "batchFrameworkProcessing",
                                        "rid": detail("int", 0)})
        b.add("ec", 2, 2, 1, 7.5, 9.0, {"name": "modelExec", "rid": detail("int", 0)})
        b.add("ec", 2, 2, 2, 9.5, 9.5, {"name": "Free", "rid": "int"})
        b.add("ec", 2, 2, 3, 9.6, 9.6, {"name": "Enqueue", "rid": ["int", "other"]})

    add_in_order(link_first, api, engine)
    f = b.build([ProcessInfo("h", 1, "api_server", None, ["api"]),
                 ProcessInfo("h", 2, "engine_core", None, ["ec"])]).set_index("name")
    assert f.loc["batchFrameworkProcessing", "rid_detail"][0]["rid"] == "ext"
    assert f.loc["modelExec", "rid_detail"][0]["rid"] == "ext"
    assert f.loc["modelExec", "rids"] == ["ext"]
    assert f.loc["Free", "rids"] == ["ext"]
    assert f.loc["Enqueue", "rids"] == ["ext", "other"]
    assert f.loc["httpReq", "rids"] == ["ext"]
    assert f.loc["link", "rids"] == [] and f.loc["link", "attrs"] == {"from": "ext",
                                                                      "to": "int"}
    assert f.loc["httpReq", "role"] == "api_server" and f.loc["Free", "host"] == "h"


def test_consecutive_steps_with_same_requests_stay_distinct():
    b = RecordBuilder()
    b.add("ec", 2, 2, 0, 1.0, 2.0, {"name": "batchFrameworkProcessing", "rid": detail("r", 0)})
    b.add("ec", 2, 2, 1, 2.0, 3.0, {"name": "modelExec", "rid": detail("r", 0)})
    b.add("ec", 2, 2, 2, 4.0, 5.0, {"name": "batchFrameworkProcessing", "rid": detail("r", 1)})
    b.add("ec", 2, 2, 3, 5.0, 6.0, {"name": "modelExec", "rid": detail("r", 1)})
    f = b.build([])
    assert [d[0]["iter"] for d in f["rid_detail"]] == [0, 0, 1, 1]
    assert f["rid_detail"][0] is f["rid_detail"][1]  # one copy per step


@pytest.mark.parametrize("link_first", [True, False])
def test_shared_id_lists_are_mapped_once_and_alike(link_first):
    b = RecordBuilder()

    def api():
        b.add("api", 1, 1, 0, 0.5, 0.5, {"name": "link", "type": 3, "from": "ext",
                                         "to": "int"})

    def engine():
        for mark, name in enumerate(("Enqueue", "Free")):  # one id: one shared list
            b.add("ec", 2, 2, mark, 1.0 + mark, 1.0 + mark, {"name": name, "rid": "int"})
        for mark, name in enumerate(("KVCacheStatus", "detokenize"), start=2):  # equal lists
            b.add("ec", 2, 2, mark, 1.0 + mark, 1.0 + mark, {"name": name,
                                                             "rid": ["int", "x", "int2"]})

    add_in_order(link_first, api, engine)
    f = b.build([])
    number = dict(zip(f["name"].tolist(), f["rids"].array.numbers.tolist()))  # one list each
    assert number["Enqueue"] == number["Free"] and len(f["rids"].array.table) == 3
    assert number["KVCacheStatus"] == number["detokenize"] and number["link"] == 0
    f = f.set_index("name")
    assert f.loc["Free", "rids"] == ["ext"]
    assert f.loc["detokenize", "rids"] == ["ext", "x", "int2"]
    assert f.loc["link", "rids"] == []


def test_repeated_small_dicts_are_shared_only_when_written_alike():
    b = RecordBuilder()
    values = [1, 1, 1.0, True, 0.0, -0.0, "1", None]
    for mark, value in enumerate(values):
        b.add("s", 1, 1, mark, float(mark), float(mark),
              {"name": "n", "QueueSize=": 3, "scope#QueueName": "waiting", "size": value})
    f = b.build([])
    attrs = f["attrs"].tolist()
    assert [a["size"] for a in attrs] == values
    assert [type(a["size"]) for a in attrs] == [type(v) for v in values]
    assert [str(a["size"]) for a in attrs] == [str(v) for v in values]  # -0.0 stays -0.0
    assert attrs[0] is attrs[1] and len({id(a) for a in attrs}) == len(values) - 1
    assert len({id(m) for m in f["metrics"]}) == 1 and f["metrics"][0] == {"QueueSize": 3.0}
    assert len({id(m) for m in f["scopes"]}) == 1


def test_helpers():
    assert list(empty_frame().columns) == list(RECORD_COLUMNS)
    assert format_datetime_us([1_767_225_600_000_001.0, float("nan")]).tolist() == [
        "2026-01-01 00:00:00.000001+00:00", ""]
    # Whole µs exactly, on every pandas the package accepts (2.0 printed .000499 for .000500),
    # rounded to the nearest µs; a value that is no time is empty, not an error.
    assert format_datetime_us([1_767_225_600_000_500.0, 1_767_225_600_049_999.6,
                               float("inf")]).tolist() == [
        "2026-01-01 00:00:00.000500+00:00", "2026-01-01 00:00:00.050000+00:00", ""]
    assert guess_role(["httpReq", "detokenize"]) == "api_server"
    assert guess_role(["modelExec", "Enqueue"]) == "engine_core"
    assert guess_role(["sample"]) == "worker"
    assert guess_role([]) == ""


def test_text_columns_are_codes_that_read_as_the_text():
    """Names, domains, hosts ... as category codes: the same values, order and groups as the
    text they replace (random records, several processes, empty names among them)."""
    import random

    import numpy as np

    from otel_vllm_ascend.analysis.frame import TEXT_CODE_COLUMNS

    rng = random.Random(5)
    names = ["modelExec", "httpReq", "", "Enqueue", "b", "B", "é"]
    b = RecordBuilder()
    written = []
    for mark in range(400):
        source = rng.choice(["s1", "s2", "s0"])
        name = rng.choice(names)
        batch_type = rng.choice(["", "Prefill", "Decode"])
        start = float(rng.randrange(50))
        b.add(source, 1 + int(source[1]), 1, mark, start, start,
              {"name": name, "domain": name[:2], "batch_type": batch_type})
        written.append((start, source, mark, name, batch_type))
    procs = [ProcessInfo(f"host{i % 2}", 1 + i, ["api_server", "engine_core", ""][i],
                         None, [f"s{i}"]) for i in range(3)]
    f = b.build(procs)
    written.sort()
    assert f["name"].tolist() == [w[3] for w in written]
    assert f["batch_type"].tolist() == [w[4] for w in written]
    for column in TEXT_CODE_COLUMNS:
        codes = f[column]
        text = pd.Series(codes.tolist(), dtype=object)
        assert isinstance(codes.dtype, pd.CategoricalDtype)
        assert codes.tolist() == text.tolist()
        assert (codes == "b").tolist() == (text == "b").tolist()
        assert codes.isin(["", "B"]).tolist() == text.isin(["", "B"]).tolist()
        assert np.array_equal(codes.sort_values(kind="stable").index,
                              text.sort_values(kind="stable").index)
        subset = f[f["name"] == "b"]
        assert [k for k, _ in subset.groupby(column, sort=True, observed=True)] == \
            sorted(set(subset[column].tolist()))
    assert f["host"].cat.codes.dtype == np.int8
    assert list(empty_frame()["name"]) == [] and len(empty_frame().columns) == len(RECORD_COLUMNS)


@pytest.mark.parametrize("ranks, narrow", [([None, 0, 3, None], True), ([1, 127, -128], True),
                                           ([None, 128], False), ([2**40, None], False)])
def test_types_and_dp_ranks_in_the_narrowest_nullable_type(ranks, narrow):
    b = RecordBuilder()
    procs = []
    for i, rank in enumerate(ranks):
        b.add(f"s{i}", i, 1, 0, float(i), float(i), {"name": "n", "type": rank})
        procs.append(ProcessInfo("h", i, "", rank, [f"s{i}"]))
    f = b.build(procs)
    for column in ("type", "dp_rank"):
        assert str(f[column].dtype) == ("Int8" if narrow else "Int64")
        assert [None if v is pd.NA else v for v in f[column].tolist()] == ranks
        assert f[column].isna().tolist() == [r is None for r in ranks]


@pytest.mark.parametrize("low, high, dtype", [
    (0, 127, "int8"), (-128, 5, "int8"), (0, 128, "int16"), (-32768, 32767, "int16"),
    (1, 32768, "int32"), (-(2**31), 2**31 - 1, "int32"), (0, 2**31, "int64"),
    (-(2**40), 7, "int64")])
def test_pids_tids_and_marks_in_the_narrowest_integer_type(low, high, dtype):
    """The values, their order and sorting by them are those of int64 columns; only the
    type is narrower."""
    import random

    import numpy as np

    rng = random.Random(high)
    b = RecordBuilder()
    written = []
    for row in range(300):
        pid, tid, mark = (rng.choice([low, high, rng.randint(low, high)]) for _ in range(3))
        start = float(rng.randrange(40))
        source = f"s{row % 3}"
        b.add(source, pid, tid, mark, start, start, {"name": "n"})
        written.append((start, source, mark, row, pid, tid))
    f = b.build([ProcessInfo("h", 0, "", None, [f"s{i}"]) for i in range(3)])
    written.sort()  # the frame's order: time, then file, then mark (stable)
    for column, index in (("pid", 4), ("tid", 5), ("mark_id", 2)):
        assert str(f[column].dtype) == dtype
        assert f[column].tolist() == [w[index] for w in written]
        assert f[column].to_numpy(dtype="int64").tolist() == [w[index] for w in written]
        wide = pd.Series([w[index] for w in written], dtype="int64")
        assert np.array_equal(f[column].sort_values(kind="stable").index,
                              wide.sort_values(kind="stable").index)


def test_dict_columns_are_typed_tables_that_read_as_the_dicts_written():
    from otel_vllm_ascend.analysis.frame import DICT_COLUMNS
    from otel_vllm_ascend.analysis.record_dicts import RecordDicts, key_values

    b = RecordBuilder()
    messages = [
        {"name": "KVCacheStatus", "TotalBlocks=": 10, "UsagePercent=": 0.25, "scope#dev": 1},
        {"name": "Enqueue", "QueueSize=": 3, "scope#QueueName": "waiting"},
        {"name": "link", "type": 3, "from": "a", "to": "1"},
        {"name": "CacheHitRate", "hitCache": True, "n+": 2},
        {"name": "x", "accepted": [1, 2], "pair": [3, 4]},
        {"name": "y"},
    ]
    for mark, message in enumerate(messages):
        b.add("s", 1, 1, mark, float(mark), float(mark), dict(message))
    f = b.build([ProcessInfo("h", 1, "", None, ["s"])])
    assert f["metrics"].tolist()[:2] == [{"TotalBlocks": 10.0, "UsagePercent": 0.25},
                                         {"QueueSize": 3.0}]
    assert f["scopes"].tolist()[:2] == [{"dev": 1}, {"QueueName": "waiting"}]
    assert f["attrs"].tolist()[2:5] == [{"from": "a", "to": "1"}, {"hitCache": True},
                                        {"accepted": [1, 2], "pair": [3, 4]}]
    assert type(f["attrs"][3]["hitCache"]) is bool
    assert f["metric_incs"].tolist()[3] == {"n": 2.0}
    for column in DICT_COLUMNS:
        assert isinstance(f[column].array, RecordDicts)
        subset = f.loc[f["name"] != "y"]
        assert isinstance(subset[column].array, RecordDicts)
    assert key_values(f["attrs"], "pair").tolist() == [None] * 4 + [[3, 4], None]
