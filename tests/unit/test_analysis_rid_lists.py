"""RidLists: the records' id lists as codes into one table, against the lists they replace."""

import random

import numpy as np
import pandas as pd
import pytest

from otel_vllm_ascend.analysis import rid_pairs
from otel_vllm_ascend.analysis.frame import ProcessInfo, RecordBuilder
from otel_vllm_ascend.analysis.rid_detail import RequestDetail, compact
from otel_vllm_ascend.analysis.rid_lists import (
    RidLists,
    TableIds,
    build_table,
    rid_lengths,
    rid_sequence,
)


def _random_lists(seed, rows=300):
    """Shared lists as the reader makes them: one list per single id, batch lists repeated
    by several records, empty lists; some equal lists not shared."""
    rng = random.Random(seed)
    ids = [f"req-{i}" for i in range(40)] + ["", "é", "7"]
    singles = {rid: [rid] for rid in ids}
    batches = [rng.sample(ids, rng.randint(2, 20)) for _ in range(15)]
    lists = []
    for _ in range(rows):
        kind = rng.random()
        if kind < 0.2:
            lists.append([])
        elif kind < 0.6:
            lists.append(singles[rng.choice(ids)])
        elif kind < 0.9:
            lists.append(rng.choice(batches))
        else:
            lists.append(list(rng.choice(batches)))  # equal, not the same object
    return lists


@pytest.mark.parametrize("seed", range(5))
def test_reads_as_the_lists_it_replaces(seed):
    lists = _random_lists(seed)
    column = RidLists.from_lists(lists)
    assert column.tolist() == lists and list(column) == lists and len(column) == len(lists)
    assert [column[i] for i in range(len(lists))] == lists
    assert column.lengths().tolist() == [len(x) for x in lists]
    as_objects = column.to_numpy(dtype=object)
    assert as_objects.dtype == object and as_objects.tolist() == lists
    # a list shared by many records is stored once; each call makes it once
    made = column.tolist()
    first = {}
    for number, rids in zip(column.numbers.tolist(), made):
        assert first.setdefault(number, rids) is rids
    assert len(column.table) <= len({id(x) for x in lists}) + 1
    # ids are the reader's own strings
    assert {id(s) for rids in made for s in rids} <= {id(s) for rids in lists for s in rids}


@pytest.mark.parametrize("seed", range(3))
def test_in_a_frame_selections_keep_the_lists(seed):
    lists = _random_lists(seed)
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"n": np.arange(len(lists)), "rids": RidLists.from_lists(lists)})
    mask = rng.random(len(lists)) < 0.4
    picked = frame.loc[mask, ["rids", "n"]]
    assert picked["rids"].tolist() == [x for x, m in zip(lists, mask) if m]
    order = rng.permutation(len(lists))
    assert frame["rids"].iloc[order].tolist() == [lists[i] for i in order]
    assert frame.sort_values("n", ascending=False)["rids"].tolist() == lists[::-1]
    both = pd.concat([picked, frame], ignore_index=True)
    assert both["rids"].tolist() == picked["rids"].tolist() + lists
    assert frame.iloc[3]["rids"] == lists[3]
    assert rid_sequence(frame["rids"]) is frame["rids"].array
    assert rid_lengths(frame["rids"]).tolist() == [len(x) for x in lists]
    plain = pd.Series(lists, dtype=object)  # frames made by hand keep plain lists
    assert rid_sequence(plain) == lists and rid_lengths(plain).tolist() == [len(x) for x in lists]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("chunk", [1, 7, 64, 10_000])
def test_pairs_from_codes_match_pairs_from_lists(seed, chunk, monkeypatch):
    """rid_pairs reads the codes directly: the same (code, row) chunks as from the lists,
    chunk boundaries cutting through records included."""
    monkeypatch.setattr(rid_pairs, "CHUNK_PAIRS", chunk)
    lists = _random_lists(seed)
    column = RidLists.from_lists(lists)
    rows_at = np.flatnonzero(np.random.default_rng(seed).random(len(lists)) < 0.5)
    for at in (None, rows_at):
        plain_coder, code_coder = rid_pairs.RequestCodes(), rid_pairs.RequestCodes()
        plain = list(rid_pairs.pair_chunks(lists, plain_coder, at))
        coded = list(rid_pairs.pair_chunks(column, code_coder, at))
        assert len(plain) == len(coded)
        for (a_codes, a_rows), (b_codes, b_rows) in zip(plain, coded):
            assert a_codes.tolist() == b_codes.tolist() and a_rows.tolist() == b_rows.tolist()
        assert plain_coder.code_of == code_coder.code_of
    grouped_a, begins_a = rid_pairs.rows_by_request(lists, rid_pairs.RequestCodes())
    grouped_b, begins_b = rid_pairs.rows_by_request(column, rid_pairs.RequestCodes())
    assert grouped_a.tolist() == grouped_b.tolist() and begins_a.tolist() == begins_b.tolist()


def test_codes_of_rows():
    lists = _random_lists(9)
    column = RidLists.from_lists(lists)
    rows = np.array([5, 0, 5, 17, 2], dtype=np.int64)
    codes, record = column.codes_of(rows)
    assert column.table.ids[codes].tolist() == [rid for r in rows for rid in lists[r]]
    assert record.tolist() == [i for i, r in enumerate(rows) for _ in lists[r]]
    empty_codes, empty_record = column.codes_of(np.zeros(0, dtype=np.int64))
    assert len(empty_codes) == 0 and len(empty_record) == 0


def test_empty_and_table_shape():
    table, numbers = build_table([[], [], []])
    assert len(table) == 1 and numbers.tolist() == [0, 0, 0] and table.ids_of(0).tolist() == []
    assert RidLists.from_lists([]).tolist() == []


def test_batch_details_read_their_ids_from_the_table():
    """A batch's compact dicts keep their record's list number, not a list: the same dicts,
    text and columns as before the frame was built."""
    items = [{"rid": r, "iter": i, "type": 1} for i, r in enumerate(("a", "b", "c"))]
    b = RecordBuilder()
    for mark, name in enumerate(("batchFrameworkProcessing", "modelExec")):
        b.add("ec", 2, 2, mark, 1.0 + mark, 2.0 + mark,
              {"name": name, "rid": [dict(item) for item in items]})
    f = b.build([ProcessInfo("h", 2, "engine_core", None, ["ec"])])
    detail = f["rid_detail"].iloc[0]
    assert detail is f["rid_detail"].iloc[1]  # one detail for the step's two records
    assert isinstance(detail.rids, TableIds) and detail.rids.number == f["rids"].array.numbers[0]
    assert list(detail) == items and repr(detail) == repr(items)
    assert detail[1] == items[1] and len(detail) == 3 and bool(detail)
    assert list(detail.rids) == ["a", "b", "c"] and np.asarray(detail.rids).tolist() == [
        "a", "b", "c"]
    assert f["rids"].tolist() == [["a", "b", "c"]] * 2
    out = np.empty(3, dtype=object)
    out[:] = detail.rids
    assert out.tolist() == ["a", "b", "c"]
    assert compact([dict(item) for item in items], ["a", "b", "c"]) == detail


@pytest.mark.parametrize("chunk", [1, 3, 50, 1_000_000])
def test_table_coded_a_chunk_at_a_time(chunk, monkeypatch):
    """Chunks of ids that cut through the distinct lists give the same lists."""
    from otel_vllm_ascend.analysis import rid_lists

    monkeypatch.setattr(rid_lists, "_CHUNK_IDS", chunk)
    for seed in range(3):
        lists = _random_lists(seed)
        column = RidLists.from_lists(lists)
        assert column.tolist() == lists
        assert len(set(column.table.ids.tolist())) == len(column.table.ids)


def share_equal_lists(rids_column: list, detail_column: list) -> None:
    """The reference for :meth:`RidLists.concat_parts` (what the parallel reader's merge did
    before it joined tables): equal id lists of several ids made one list, in place, and a
    ``RequestDetail``'s ``rids`` the record's shared list."""
    shared: dict[int, list] = {}
    for row, rids in enumerate(rids_column):
        if len(rids) < 2:
            continue
        key = hash(tuple(rids))
        first = shared.setdefault(key, rids)
        if first is rids or first != rids:
            continue
        rids_column[row] = first
        detail = detail_column[row]
        if isinstance(detail, RequestDetail) and detail.rids is rids:
            detail.rids = first


def test_equal_lists_read_apart_become_one_list():
    # Two parts read apart (read_parallel.py) each hold their own copy of a step's list; the
    # reference makes equal lists one, a RequestDetail's ids included, and leaves the rest alone.
    engine = ["a", "b", "c"]
    detail = compact([{"rid": r, "iter": 1} for r in engine], engine)
    api = ["a", "b", "c"]
    other, single, none = ["a", "c"], ["a"], []
    rids = [api, other, engine, engine, list(single), single, none, ["a", "c", "b"]]
    details = [None, None, detail, detail, None, None, None, None]
    share_equal_lists(rids, details)
    assert rids[0] is api and rids[2] is api and rids[3] is api and detail.rids is api
    assert rids[1] is other and rids[5] is single and rids[6] is none
    assert rids[4] is not single  # lists of one id are shared by the reader, not here
    assert rids[7] == ["a", "c", "b"] and rids[7] is not api  # same ids, another order
    assert [r for r in rids] == [["a", "b", "c"], ["a", "c"], ["a", "b", "c"],
                                 ["a", "b", "c"], ["a"], ["a"], [], ["a", "c", "b"]]
    assert list(detail) == [{"rid": r, "iter": 1} for r in ("a", "b", "c")]


def _part_lists(rng, rows):
    """One part's lists as a reading worker makes them: shared single-id and batch lists,
    equal lists not shared, empty lists; internal ids (``in-``) some of whose links another
    part read, and their external ids (``ex-``) both present."""
    ids = [f"in-{i}" for i in range(12)] + [f"ex-{i}" for i in range(12)] + ["", "é"]
    singles = {rid: [rid] for rid in ids}
    batches = [rng.sample(ids, rng.randint(2, 8)) for _ in range(6)]
    lists = []
    for _ in range(rows):
        kind = rng.random()
        if kind < 0.2:
            lists.append([])
        elif kind < 0.5:
            lists.append(singles[rng.choice(ids)])
        elif kind < 0.6:
            lists.append([rng.choice(ids)])  # a single id's list not shared
        elif kind < 0.9:
            lists.append(rng.choice(batches))
        else:
            lists.append(list(rng.choice(batches)))
    return lists


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("count", [1, 2, 5, 9])
@pytest.mark.parametrize("mode", ["list", "consumed", "clashing hashes", "few hashes"])
def test_parts_concatenated_are_the_table_of_the_mapped_shared_lists(seed, count, mode,
                                                                      monkeypatch):
    """concat_parts against what the merge did before: each part's lists mapped in place
    by its links, equal lists of 2+ ids shared (share_equal_lists), then from_lists. The
    parts given as a list or taken one at a time (``consumed``), and with every list's hash
    the same (or one of two), so that lists are told apart by their codes."""
    import pickle

    from otel_vllm_ascend.analysis import rid_lists as module
    from otel_vllm_ascend.analysis.frame import map_request_ids

    if mode == "clashing hashes":
        monkeypatch.setattr(module, "hash", lambda raw: 7, raising=False)
    elif mode == "few hashes":
        monkeypatch.setattr(module, "hash", lambda raw: len(raw) % 2, raising=False)

    rng = random.Random(seed * 100 + count)
    parts = [_part_lists(rng, rng.choice([0, 0, 1, 7, 60])) for _ in range(count)]
    links = [{f"in-{i}": f"ex-{i}" for i in range(12) if rng.random() < 0.5}
             if rng.random() < 0.7 else {} for _ in range(count)]
    # Each part sent on its own (no list shared between parts), as the workers' parts are.
    sent = [RidLists.from_lists(pickle.loads(pickle.dumps(lists))) for lists in parts]
    if mode == "consumed":
        got = RidLists.concat_parts(module.consumed(sent), links)
        assert sent == [None] * count  # each part let go
    else:
        got = RidLists.concat_parts(sent, links)
    expected_lists = []
    for lists, pending in zip(parts, links):
        lists = pickle.loads(pickle.dumps(lists))
        map_request_ids(lists, [None] * len(lists), pending)
        expected_lists.extend(lists)
    share_equal_lists(expected_lists, [None] * len(expected_lists))
    expected = RidLists.from_lists(expected_lists)
    assert got.numbers.dtype == expected.numbers.dtype
    assert got.numbers.tolist() == expected.numbers.tolist()
    assert got.table.offsets.tolist() == expected.table.offsets.tolist()
    assert got.table.codes.tolist() == expected.table.codes.tolist()
    assert got.table.ids.tolist() == expected.table.ids.tolist()
    assert got.tolist() == expected_lists


def test_concat_parts_of_nothing_and_of_empty_parts():
    assert len(RidLists.concat_parts([])) == 0
    assert len(RidLists.concat_parts(iter([]))) == 0
    got = RidLists.concat_parts([RidLists.from_lists([]), RidLists.from_lists([[], []])])
    assert got.tolist() == [[], []] and len(got.table) == 1
