"""The records frame: every capture record of every process in one pandas DataFrame.

Readers (:mod:`otel_vllm_ascend.analysis.readers`) turn ``ms_service_*.db`` files and OTLP JSON
files into this frame; every builder (requests, batches, KV cache, summaries, trace) reads it and
never changes it. One row per record (span, event, link, metric sample); Meta rows are not
records, they become the per-process columns ``host``, ``role`` and ``dp_rank``.

Columns (``RECORD_COLUMNS``, in this order):

============  ===========  ======================================================================
column        dtype        meaning
============  ===========  ======================================================================
source        category     file stem the record came from (``ms_service_host-123``)
host          category     host name (Meta ``hostname``, else taken from the file name)
pid           int8..int64  process id (``Mstx.pid``), the narrowest integer type that holds
                           every value (int16 / int32 for real pids); widen before arithmetic
tid           int8..int64  OS thread id (``Mstx.tid``), narrowest as ``pid``
role          category     ``api_server`` / ``engine_core`` / ``worker`` / ``""`` (Meta ``role``;
                           when absent, guessed from the record names the process wrote)
dp_rank       Int8/Int64   data-parallel rank (Meta ``dpRankId``), NA without data parallelism
mark_id       int8..int64  ``Mstx.markId``: per-process emission order, narrowest as ``pid``
name          category     record name (``httpReq``, ``modelExec``, ...); ``""`` if none
domain        category     record domain (``Engine``, ``Schedule``, ``Schedule.KVCache``, ...)
type          Int8/Int64   message ``type``: 0 event, 2 span, 3 link; NA if absent (metrics)
start_us      float64      start, microseconds since the Unix epoch
end_us        float64      end, microseconds since the Unix epoch (= start for events)
dur_us        float64      duration in µs, exact (computed from integer ns where known)
rids          rid_lists    list[str]: the request ids the record is about, EngineCore (internal)
                           ids already replaced by the API server's (external) ids through the
                           link records of *all* processes; ``[]`` if none. Held as int32
                           codes into one id table (``rid_lists.RidLists``): ``tolist()`` and
                           ``[i]`` give lists; readers of many records take ``rid_sequence`` /
                           ``rid_lengths`` (rid_lists.py), which make no list
rid_detail    object       list[dict], a ``RequestDetail`` reading like one (rid_detail.py),
                           or None: the per-request dicts of batch records (``rid``, ``iter``,
                           ``type``, ``num_scheduled_tokens``, ...), ``rid`` mapped like ``rids``
batch_type    category     ``Prefill`` / ``Decode`` / ``Prefill,Decode`` / ``""``
metrics       record_dicts dict name -> float of the ``<N>=`` keys (suffix removed)
metric_incs   record_dicts dict name -> float of the ``<N>+`` keys (suffix removed)
scopes        record_dicts dict name -> value of the ``scope#<N>`` keys (prefix removed)
attrs         record_dicts dict of every other message key (``batch_size``, ``hitCache``, ``from``,
                           ``to``, ...). A key named like a column never collides with it.
                           The four dict columns (``DICT_COLUMNS``) are held as one typed
                           table per key tuple (``record_dicts.RecordDicts``): ``tolist()``,
                           iteration and ``[i]`` give dicts; readers of many records take one
                           key with ``record_dicts.key_values`` / ``has_keys`` (no dict made)
============  ===========  ======================================================================

The ``category`` columns (``TEXT_CODE_COLUMNS``) are text held as codes into the column's
sorted distinct values: they compare, sort, ``isin`` and ``tolist`` as the text does; group by
them with ``observed=True`` (pandas before 3.0 otherwise adds empty groups for values absent
from a subset), or take ``to_numpy(dtype=object)`` first.

Rows are sorted by ``start_us`` (ties in file, then ``mark_id`` order). The object columns
hold shared objects, and the dicts read from the dict columns may be shared by several
records: read them, never modify them. A step's schedule and ``modelExec`` rows
share one ``rid_detail`` (whose ids are its record's list in the ``rids`` table); records
about the same requests have the same list number in ``rids`` (every record about one request
the same one-id list, a step's KV status and detokenize rows the batch's list); equal dicts
of one or two plain values (a queue size, a batch size, a queue name) are one dict; ids,
metric keys and short scope values are shared strings. Link records stay in the frame (name
``link``, type 3, ``attrs`` holding ``from``/``to``, ``rids`` empty).

Message text is decoded once per row: JSON objects directly; the C++ caret form
(``^key^:^value^,`` with a trailing comma) by turning ``^`` into ``"`` and wrapping in braces.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd

from otel_vllm_ascend.analysis.narrow_ints import fits, narrowest
from otel_vllm_ascend.analysis.record_dicts import RecordDicts
from otel_vllm_ascend.analysis.rid_detail import RequestDetail, compact
from otel_vllm_ascend.analysis.rid_lists import RidLists, TableIds
from otel_vllm_ascend.analysis.time_window import TimeWindow, record_us

RECORD_COLUMNS: tuple[str, ...] = (
    "source", "host", "pid", "tid", "role", "dp_rank", "mark_id", "name", "domain", "type",
    "start_us", "end_us", "dur_us", "rids", "rid_detail", "batch_type", "metrics",
    "metric_incs", "scopes", "attrs",
)

# Text columns with few distinct values, held as category codes (``_categories``).
TEXT_CODE_COLUMNS: tuple[str, ...] = ("source", "host", "role", "name", "domain", "batch_type")
# Key/value columns, held as typed tables per key tuple (record_dicts.py).
DICT_COLUMNS: tuple[str, ...] = ("metrics", "metric_incs", "scopes", "attrs")

ROLE_API_SERVER = "api_server"
ROLE_ENGINE_CORE = "engine_core"
ROLE_WORKER = "worker"

# Record names that tell which vLLM process wrote a capture without a Meta ``role`` row.
_API_SERVER_NAMES = frozenset({"httpReq", "httpRes", "tokenize", "detokenize", "link"})
_ENGINE_CORE_NAMES = frozenset({"batchFrameworkProcessing", "modelExec", "KVCacheStatus",
                                "Enqueue", "Dequeue", "Free", "CacheHitRate", "Allocate",
                                "AppendSlot", "SwapIn", "SwapOut", "ReqState"})
_WORKER_NAMES = frozenset({"computing_logits", "sample", "modelRunnerExec", "forward",
                           "specDecoding"})

_LINK_TYPE = 3
_EMPTY: dict = {}  # shared by every record without such keys; never modified
_NO_RIDS: list = []  # the ``rids`` of every record about no request; never modified
_SHAREABLE = frozenset({int, float, str, bool, type(None)})
_SHARED_ENTRIES = 65_536  # id lists, dicts or floats remembered for sharing (then forgotten)
_intern = sys.intern
_json_loads = json.loads
try:  # msgspec (installed with vLLM) decodes JSON faster; the standard module is the fallback
    from msgspec import DecodeError as _FastDecodeError
    from msgspec.json import Decoder as _FastDecoder

    _fast_loads = _FastDecoder().decode
except ImportError:  # pragma: no cover - depends on the environment
    _fast_loads = None
    _FastDecodeError = ValueError


@dataclass
class ProcessInfo:
    """One process seen in the input (possibly spread over several per-thread files)."""

    host: str
    pid: int
    role: str = ""
    dp_rank: Optional[int] = None
    sources: list[str] = field(default_factory=list)
    meta: dict[str, str] = field(default_factory=dict)
    records: int = 0


def parse_message(text: Any) -> Optional[dict]:
    """Decode one ``Mstx.message``; ``None`` when it is not a JSON object in either form."""
    if not isinstance(text, str):
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        else:
            return None
    if text.startswith("{"):
        if _fast_loads is not None:
            try:
                value = _fast_loads(text)
                return value if isinstance(value, dict) else None
            except (_FastDecodeError, ValueError):
                pass  # NaN literals, or caret form that starts with a brace
        try:
            value = _json_loads(text)
            return value if isinstance(value, dict) else None
        except ValueError:
            pass  # maybe caret form that happens to start with a brace
    body = text.replace("^", '"').strip()
    if not body:
        return None
    if not (body.startswith("{") and body.endswith("}")):
        if body.endswith(","):
            body = body[:-1]
        body = "{" + body + "}"
    if _fast_loads is not None:  # the C library's rows: most of a C-library capture
        try:
            value = _fast_loads(body)
            return value if isinstance(value, dict) else None
        except (_FastDecodeError, ValueError):
            pass
    try:
        value = _json_loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def canonical_rid(value: Any) -> str:
    """Request ids as text; integral numbers print without a fraction (``5.0`` -> ``"5"``)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


# Metric values are mostly small whole numbers written as JSON integers (queue sizes, block
# counts, token counts): one shared float object per such value instead of one per record.
_SHARED_FLOAT_LIMIT = 1 << 20
_shared_floats: dict[int, float] = {}


def _number(value: Any) -> float:
    if value.__class__ is float:
        return value
    if value.__class__ is int and -_SHARED_FLOAT_LIMIT < value < _SHARED_FLOAT_LIMIT:
        number = _shared_floats.get(value)
        if number is None:
            number = float(value)
            if len(_shared_floats) < _SHARED_ENTRIES:
                _shared_floats[value] = number
        return number
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def _shared_text(value: Any) -> Any:
    """Short strings (queue names, flags) interned: one object per distinct value."""
    return _intern(value) if value.__class__ is str and len(value) <= 32 else value


class RecordBuilder:
    """Collects records column by column (cheap appends), then builds the frame once."""

    def __init__(self, window: Optional[TimeWindow] = None) -> None:
        self.columns: dict[str, list] = {name: [] for name in RECORD_COLUMNS}
        self.window = window  # only records starting inside it are kept (time_window.py)
        self.links_outside: list[tuple[str, str]] = []  # (to, from) of links not kept as rows
        self.links: dict[str, str] = {}  # internal (to) -> external (from)
        # The schedule span and the modelExec of one step carry the same request dicts:
        # keep one copy (halves the memory of a large capture) and its id list.
        self._last_detail: dict[str, tuple[list, list, list]] = {}
        # Request id as written -> the one shared string object that stands for it: the
        # external id as soon as a link for it is known (so most ids need no later mapping).
        self._ids: dict[str, str] = {}
        self._stale: set[str] = set()  # ids first seen before their link record
        self._single: dict[str, list[str]] = {}  # id -> the one-id list records share
        self._lists: dict[int, list[str]] = {}  # hash of a longer list -> that list
        self._dicts: dict[tuple, dict] = {}  # (key, type, value, ...) -> the shared dict

    def __len__(self) -> int:
        return len(self.columns["name"])

    def _new_id(self, value: str) -> str:
        canonical = self.links.get(value, value)
        self._ids[value] = canonical
        return canonical

    def _ids_of(self, items: list) -> list[str]:
        ids_get = self._ids.get
        try:  # fast path: every id already seen (the usual case)
            known = [ids_get(item) for item in items]
            if None not in known:
                return known
        except TypeError:  # an unhashable item (a dict in a plain id list)
            pass
        new_id = self._new_id
        out = []
        for item in items:
            if item is None or isinstance(item, dict):
                continue
            if not isinstance(item, str):
                item = canonical_rid(item)
            out.append(ids_get(item) or new_id(item))
        return out

    def _shared(self, rids: list[str]) -> list[str]:
        """Lists of none or one id shared by every record about that id (most records are
        about one request: a few lists per request instead of one per record), longer lists
        by the records listing the same requests."""
        if len(rids) > 1:
            # A step's request list is written again by other records of the step (the KV
            # status, the API server's detokenize): equal lists share one.
            key = hash(tuple(rids))
            shared = self._lists.get(key)
            if shared is not None and shared == rids:
                return shared
            if len(self._lists) >= _SHARED_ENTRIES:
                self._lists.clear()
            self._lists[key] = rids
            return rids
        if not rids:
            return _NO_RIDS
        shared = self._single.get(rids[0])
        if shared is None:
            shared = self._single[rids[0]] = rids
        return shared

    def _shared_dict(self, values: dict) -> dict:
        """One dict for all records whose one or two keys hold the same plain values (the
        value's type in the key: ``1``, ``1.0`` and ``True`` are equal, and so are ``0.0`` and
        ``-0.0``, but they are written differently)."""
        if len(values) > 2:
            return values
        key: tuple = ()
        for name, value in values.items():
            kind = value.__class__
            if kind not in _SHAREABLE:
                return values
            key += (name, kind, value, kind is float and value == 0.0 and str(value))
        known = self._dicts.get(key)
        if known is not None:
            return known
        if len(self._dicts) >= _SHARED_ENTRIES:
            self._dicts.clear()
        self._dicts[key] = values
        return values

    def add(self, source: str, pid: int, tid: int, mark_id: int, start_us: float,
            end_us: float, message: dict, type_default: Optional[int] = None,
            dur_us: Optional[float] = None, start_ns: Any = None) -> bool:
        """Add one record whose message keys are already decoded into ``message``; False when
        it starts outside the builder's time window (a link still maps its ids then).

        ``dur_us`` should be computed from integer ns when the source has them: float µs since
        the epoch resolve only 0.25 µs, so ``end_us - start_us`` is not exact; ``start_ns``
        (the source's start, when it has ns) places the record in the time window exactly.
        """
        cols = self.columns
        name = message.pop("name", "")
        domain = message.pop("domain", "")
        rtype = message.pop("type", type_default)
        try:
            rtype_int = None if rtype is None else int(rtype)
        except (TypeError, ValueError):
            rtype_int = None
        window = self.window
        outside = window is not None and not window.holds(
            record_us(start_us * 1000 if start_ns is None else start_ns))
        if outside and name != "link" and rtype_int != _LINK_TYPE:
            return False
        rid = message.pop("rid", None)
        batch_type = message.pop("batch_type", "")
        rids: list[str] = _NO_RIDS
        detail = None
        if rid is not None:
            if isinstance(rid, list):
                if rid and isinstance(rid[0], dict):
                    last = self._last_detail.get(source)
                    if last is not None and len(last[0]) == len(rid) and last[0] == rid:
                        detail, rids = last[1], last[2]
                    else:
                        # Compared as written, before ids are mapped: keep a raw copy.
                        raw = [dict(item) if isinstance(item, dict) else item for item in rid]
                        detail = rid
                        try:  # fast path: every item is a dict with a usable rid
                            rids = self._ids_of([item["rid"] for item in rid])
                            if len(rids) != len(rid):
                                raise TypeError("an item's rid is not an id")
                            for item, value in zip(rid, rids):
                                item["rid"] = value
                        except (KeyError, TypeError):  # some items lack a usable rid
                            rids = []
                            for item in rid:
                                if isinstance(item, dict) and item.get("rid") is not None:
                                    value = item["rid"]
                                    key = value if isinstance(value, str) else canonical_rid(
                                        value)
                                    item["rid"] = self._ids.get(key) or self._new_id(key)
                                    rids.append(item["rid"])
                        if rids and len(rids) == len(rid):
                            rids = self._shared(rids)
                            detail = compact(rid, rids) or detail
                        self._last_detail[source] = (raw, detail, rids)
                else:
                    rids = self._shared(self._ids_of(rid))
            elif isinstance(rid, str):
                if rid:
                    rids = self._shared(self._ids_of([rid]))
            elif not isinstance(rid, dict):
                rids = self._shared(self._ids_of([rid]))
        metrics: dict[str, float] = {}
        incs: dict[str, float] = {}
        scopes: dict[str, Any] = {}
        attrs: dict[str, Any] = {}
        for key, value in message.items():
            last = key[-1:] if key else ""
            # Keys cut from the message's (``QueueSize=``) are new strings each time: interned,
            # a capture's hundreds of thousands of metric dicts share them.
            if last == "=":
                metrics[_intern(key[:-1])] = _number(value)
            elif last == "+":
                incs[_intern(key[:-1])] = _number(value)
            elif key.startswith("scope#"):
                scopes[_intern(key[6:])] = _shared_text(value)
            else:
                attrs[_intern(key)] = value
        # Most records have no increments, scopes or attributes: one shared empty dict (the
        # frame is read-only) instead of one each; names are interned.
        # Small dicts that repeat (a queue size, a batch size, a queue name) are shared too.
        shared = self._shared_dict
        metrics = shared(metrics) if metrics else _EMPTY
        incs = shared(incs) if incs else _EMPTY
        scopes = shared(scopes) if scopes else _EMPTY
        attrs = shared(attrs) if attrs else _EMPTY
        if (rtype_int == _LINK_TYPE or name == "link") and "to" in attrs and "from" in attrs:
            internal = canonical_rid(attrs["to"])
            external = canonical_rid(attrs["from"])
            self.links[internal] = external
            known = self._ids.get(internal)
            if known is not None and known != external:
                self._stale.add(internal)  # records read earlier still hold the internal id
            self._ids[internal] = self._ids.get(external) or self._new_id(external)
            if outside:
                self.links_outside.append((internal, external))
        if outside:
            return False
        cols["source"].append(source)
        cols["pid"].append(pid)
        cols["tid"].append(tid)
        cols["mark_id"].append(mark_id)
        cols["name"].append(_intern(name if isinstance(name, str) else str(name)))
        cols["domain"].append(_intern(domain if isinstance(domain, str) else str(domain)))
        cols["type"].append(rtype_int)
        cols["start_us"].append(start_us)
        cols["end_us"].append(end_us)
        cols["dur_us"].append(end_us - start_us if dur_us is None else dur_us)
        cols["rids"].append(rids)
        cols["rid_detail"].append(detail)
        cols["batch_type"].append(
            _intern(batch_type if isinstance(batch_type, str) else str(batch_type)))
        cols["metrics"].append(metrics)
        cols["metric_incs"].append(incs)
        cols["scopes"].append(scopes)
        cols["attrs"].append(attrs)
        return True

    def build(self, processes: Iterable[ProcessInfo]) -> pd.DataFrame:
        """Map request ids, attach per-process columns, sort by time (once: the builder
        gives its columns up to the frame)."""
        cols = self.columns
        n = len(cols["name"])
        if not n:
            return empty_frame()
        if self._stale:
            map_request_ids(cols["rids"], cols["rid_detail"],
                            {rid: self.links[rid] for rid in self._stale})
        if not isinstance(cols["source"], pd.Categorical):
            cols["source"] = _categories(cols["source"])  # what its maker does below
        source_codes = _process_columns(cols, processes)
        # Sorted while the columns are made, each list dropped once made: the frame is never
        # held twice (a large capture's frame is hundreds of MB).
        start = np.asarray(cols["start_us"], dtype="float64")
        order = np.lexsort((np.asarray(cols["mark_id"], dtype="int64"), source_codes, start))
        del source_codes
        # The id lists as codes into one table (rid_lists.py); the reader's lists, and the
        # batch details' references to them, are dropped.
        rid_lists = cols["rids"]
        if not isinstance(rid_lists, RidLists):  # made already (the parallel reader's merge)
            rid_lists = RidLists.from_lists(rid_lists)
        numbers = rid_lists.numbers
        for row, detail in enumerate(cols["rid_detail"]):
            if detail is not None and detail.__class__ is RequestDetail:
                detail.rids = TableIds(rid_lists.table, int(numbers[row]))
        del numbers
        cols["rids"] = rid_lists
        makers = {
            "rids": lambda v: v,
            "pid": _narrow_ints,
            "tid": _narrow_ints,
            "dp_rank": _small_ints,
            "mark_id": _narrow_ints,
            "type": _small_ints,
            "start_us": lambda v: start,
            "end_us": lambda v: np.asarray(v, dtype="float64"),
            "dur_us": lambda v: np.asarray(v, dtype="float64"),
        }
        makers.update(dict.fromkeys(TEXT_CODE_COLUMNS, _categories))
        makers.update(dict.fromkeys(DICT_COLUMNS, RecordDicts.from_dicts))
        data = {}
        for name in RECORD_COLUMNS:
            maker = makers.get(name)
            if maker is None:  # lists and dicts: an object array holding them
                values = np.empty(n, dtype=object)
                values[:] = cols[name]
            else:
                values = maker(cols[name])
            cols[name] = []
            data[name] = values[order]
            del values
        # The sorted columns are the frame's own: a frame made from a dict copies them by
        # default (into one block per type), every column held twice at the end of the read.
        return pd.DataFrame(data, columns=list(RECORD_COLUMNS), copy=False)


def _process_columns(cols: dict, processes: Iterable[ProcessInfo]) -> np.ndarray:
    """Set the per-process columns ``host``, ``role`` and ``dp_rank`` of ``cols`` (``source``
    a Categorical) from each record's (pid, source), and return the sources' codes in order of
    first appearance (the sort's tie-break). Each column is made of one value per (pid,
    source) taken by each record's group number: no list of a value per record."""
    by_key = {(p.pid, s): p for p in processes for s in p.sources}
    source = cols["source"]
    group, firsts = _groups(source.codes, np.asarray(cols["pid"]))
    hosts, roles, ranks = [], [], []
    for code, pid in firsts:
        proc = by_key.get((pid, source.categories[code]))
        hosts.append(proc.host if proc is not None else "")
        roles.append(proc.role if proc is not None else "")
        ranks.append(proc.dp_rank if proc is not None else None)
    # The Categorical of every record's value: its categories are the groups' values sorted,
    # as those of a list of every record's value would be (each group has a record).
    cols["host"] = _categories(hosts).take(group)
    cols["role"] = _categories(roles).take(group)
    cols["dp_rank"] = pd.array(ranks, dtype="Int64").take(group)
    del group, firsts
    return pd.factorize(source.codes)[0]


def _groups(codes: np.ndarray, pids: np.ndarray) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Each record's (source code, pid) group, numbered in order of first appearance (a
    ``groupby(sort=False).ngroup()``), and each group's (code, pid) in that order.

    The pair as one int64 (code times the pids' span, plus the pid's offset from the least)
    factorized: two int64 arrays of a record's length, where the group-by held several (its
    keys' codes, their combination, the numbers, the first rows)."""
    if len(codes):
        low, high = int(pids.min()), int(pids.max())
        span = high - low + 1
        if int(codes.min()) >= 0 and -2**62 < low and high < 2**62 and \
                (int(codes.max()) + 1) * span < 2**62:
            key = codes.astype(np.int64)
            key *= span
            key += pids
            key -= low
            group, uniques = pd.factorize(key)
            del key
            return group, [(int(value) // span, int(value) % span + low)
                           for value in uniques.tolist()]
    keys = pd.DataFrame({"source": codes, "pid": pids}, copy=False)
    grouped = keys.groupby(["source", "pid"], sort=False)
    firsts = grouped.head(1)  # each group's first record, in the groups' order
    return grouped.ngroup().to_numpy(), list(zip(firsts["source"].tolist(),
                                                 firsts["pid"].tolist()))


def _narrow_ints(values: Any) -> np.ndarray:
    """Process and thread ids and mark ids in the narrowest integer type that holds them
    (int16 / int32 for real pids and a process's mark count: 2-4 bytes a row instead of 8)."""
    return narrowest(np.asarray(values, dtype="int64"), np.int8, np.int16, np.int32)


def _small_ints(values: list) -> Any:
    """Nullable integers (message types, DP ranks) as Int8 when every value fits (two bytes a
    row with the mask instead of nine), else Int64."""
    array = pd.array(values, dtype="Int64")
    if array.isna().all():
        return array.astype("Int8")
    low, high = int(array.min()), int(array.max())  # NA skipped, no copy of the column
    return array.astype("Int8") if fits([low, high], np.int8) else array


def _categories(values: list) -> pd.Categorical:
    """A text column as category codes (int8 for up to 127 distinct values) into its sorted
    distinct values: one byte a row instead of an eight-byte pointer (20 MB a column at 2.5 M
    records), sorting and comparing as the text does."""
    return pd.Categorical(values)


def map_request_ids(rids_column: list, detail_column: list, links: dict[str, str]) -> None:
    """Replace internal ids by external ids in place (lists freshly decoded by the reader)."""
    if not links:
        return
    get = links.get
    done: set[int] = set()  # lists shared by several records are mapped once
    for rids in rids_column:
        if not rids or id(rids) in done:
            continue
        done.add(id(rids))
        mapped = [get(rid, rid) for rid in rids]
        if mapped != rids:
            rids[:] = mapped
    for detail in detail_column:
        if isinstance(detail, list):
            for item in detail:
                if isinstance(item, dict):
                    rid = item.get("rid")
                    ext = get(rid) if rid is not None else None
                    if ext is not None:
                        item["rid"] = ext


def guess_role(names: Iterable[str]) -> str:
    """The vLLM process kind from the record names it wrote (captures without a role row)."""
    seen = set(names)
    if seen & _ENGINE_CORE_NAMES:
        return ROLE_ENGINE_CORE
    if seen & _API_SERVER_NAMES:
        return ROLE_API_SERVER
    if seen & _WORKER_NAMES:
        return ROLE_WORKER
    return ""


def empty_frame() -> pd.DataFrame:
    """A frame with every column and no rows."""
    dtypes = {"pid": "int64", "tid": "int64", "mark_id": "int64", "dp_rank": "Int64",
              "type": "Int64", "start_us": "float64", "end_us": "float64", "dur_us": "float64"}
    columns = {c: pd.Series([], dtype=dtypes.get(c, object)) for c in RECORD_COLUMNS}
    for name in TEXT_CODE_COLUMNS:
        columns[name] = pd.Series(_categories([]))
    return pd.DataFrame(columns)


def format_datetime_us(values: Any) -> pd.Series:
    """µs since the epoch -> ``YYYY-MM-DD HH:MM:SS.ffffff+00:00`` text (UTC); NaN -> ``""``."""
    series = pd.Series(values, dtype="float64")
    known = np.isfinite(series)
    # Whole µs as integers: pandas before 2.1 turns float µs into ns through a float product
    # and lands a nanosecond short (.000500 printed as .000499).
    whole = series.round().where(known, 0).astype("int64")
    stamps = pd.to_datetime(whole, unit="us", utc=True)
    text = stamps.dt.strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    return text.astype(object).where(known, "")
