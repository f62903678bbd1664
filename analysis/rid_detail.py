"""A batch record's per-request dicts, held compactly.

A ``batchFrameworkProcessing`` (or ``modelExec``, ``specDecoding``) message lists one dict per
request it scheduled (``{"rid": ..., "iter": 0, "type": 0, "num_scheduled_tokens": 113, ...}``).
Held as Python dicts these are about 90 % of a large capture's memory (two million of them at
ten times the benchmark capture). When every dict of a record has the same keys in the same
order and every value but ``rid`` is a plain integer (what vLLM's handlers and the C library
write), :func:`compact` keeps them as one :class:`RequestDetail`: the key tuple (shared by all
records with that shape), the request ids and one integer array (int16 or int32 when the
values fit), 10-30 bytes per request instead of 700. Anything else stays a list of dicts.

Each key's values are held in the narrowest integer type that keeps them (one record of a
numpy structured array per request): the request kind fits a byte, a decode step's iteration
mostly too, so a vLLM batch entry takes 8 bytes instead of the 10 of one int16 block.

A :class:`RequestDetail` reads like that list (length, truth, items as fresh dicts, ``repr``
identical to the list's), so builders that walk dicts need no change; the hot ones read whole
columns through :meth:`RequestDetail.column`.
"""

from __future__ import annotations

from itertools import chain
from typing import Any, Iterator, Optional

import numpy as np

_schemas: dict[tuple, tuple] = {}  # key tuple -> the one shared tuple (and its formats)
_formats: dict[tuple, str] = {}  # (key tuple, items) -> the format of the list's repr
_FORMATS = 4096
_layouts: dict[tuple, np.dtype] = {}  # field types -> the one structured dtype (shared)
_FIELD_LIMITS = tuple((np.dtype(kind), int(np.iinfo(kind).min), int(np.iinfo(kind).max))
                      for kind in (np.int8, np.int16, np.int32))
_INT64 = np.dtype(np.int64)


class RequestDetail:
    """The request dicts of one record: ``keys`` (``rid`` among them), ``rids``, ``fields``.

    ``fields`` is a structured array, one record per request, field ``f<i>`` the ``i``-th key
    other than ``rid`` in the narrowest of int8 / int16 / int32 / int64 that holds its values.
    Treat it as read-only, like every object in the records frame.
    """

    __slots__ = ("keys", "rids", "fields")

    def __init__(self, keys: tuple, rids: list, fields: np.ndarray) -> None:
        self.keys = keys
        self.rids = rids
        self.fields = fields

    @property
    def values(self) -> np.ndarray:
        """The keys other than ``rid`` as one (requests, keys - 1) array of the widest field
        type (made when asked: the records hold only ``fields``)."""
        names = self.fields.dtype.names
        wide = np.result_type(*[self.fields.dtype[name] for name in names]) if names else np.int8
        out = np.empty((len(self.fields), len(names)), dtype=wide)
        for index, name in enumerate(names):
            out[:, index] = self.fields[name]
        return out

    def __len__(self) -> int:
        return len(self.rids)

    def __bool__(self) -> bool:
        return bool(self.rids)

    def _value_keys(self) -> tuple:
        return _schemas[self.keys][1]

    def __iter__(self) -> Iterator[dict]:
        keys = self.keys
        pos = keys.index("rid")
        for rid, record in zip(self.rids, self.fields.tolist()):
            row = list(record)
            row.insert(pos, rid)
            yield dict(zip(keys, row))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        row = list(self.fields[index].tolist())
        row.insert(self.keys.index("rid"), self.rids[index])
        return dict(zip(self.keys, row))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, (list, tuple, RequestDetail)):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        # Sent from a reading worker (read_parallel.py): the key tuple is registered again in
        # the receiving process, whose ``_schemas`` may not know it. The fields go as their
        # bytes and layout: an unpickled array viewed in the shared layout was two array
        # objects per batch record for the run (a quarter million at x100).
        return _restore, (self.keys, self.rids, self.fields.tobytes(), self.fields.dtype,
                          len(self.fields))

    def __repr__(self) -> str:
        """The text ``repr`` gives for the list of dicts (the reference's ``res_list``): one
        ``%`` formatting of all the values (the items' format repeated) per record."""
        keys = self.keys
        count = len(self.rids)
        text_format = _formats.get((keys, count))
        if text_format is None:
            item_format = _schemas[keys][2].replace(": %s", ": %r")  # ids as repr() writes
            text_format = "[" + ", ".join([item_format] * count) + "]"
            if len(_formats) < _FORMATS:
                _formats[(keys, count)] = text_format
        pos = keys.index("rid")
        cells = np.empty((count, len(keys)), dtype=object)  # Python ints, ids in their place
        cells[:, pos] = self.rids
        for index, name in enumerate(self.fields.dtype.names):
            cells[:, index + (index >= pos)] = self.fields[name]
        return text_format % tuple(cells.ravel().tolist())

    def column(self, key: str) -> Optional[np.ndarray]:
        """One key's values as an integer array; ``None`` when the dicts lack the key."""
        value_keys = self._value_keys()
        if key not in value_keys:
            return None
        return self.fields[f"f{value_keys.index(key)}"]


def _schema(keys: tuple, pos: int) -> tuple:
    schema = _schemas.get(keys)
    if schema is None:
        value_keys = keys[:pos] + keys[pos + 1:]
        item_format = "{" + ", ".join(
            repr(key).replace("%", "%%") + (": %s" if key == "rid" else ": %d")
            for key in keys) + "}"
        schema = _schemas[keys] = (keys, value_keys, item_format)
    return schema


def _restore(keys: tuple, rids: list, data: bytes, dtype: np.dtype, count: int
             ) -> RequestDetail:
    """A :class:`RequestDetail` unpickled: its key tuple and layout the ones this process
    shares, its fields read in place from the pickled bytes (read-only, as the frame is)."""
    layout = _layout(tuple(dtype[name] for name in dtype.names))
    fields = np.frombuffer(data, dtype=layout) if layout.itemsize else np.empty(count, layout)
    return RequestDetail(_schema(keys, keys.index("rid"))[0], rids, fields)


def _layout(types: tuple) -> np.dtype:
    """The structured dtype with fields ``f0``, ``f1``, ... of ``types``: one object for all
    records of that layout (a dtype is a few hundred bytes; there are a few layouts)."""
    layout = _layouts.get(types)
    if layout is None:
        layout = _layouts[types] = np.dtype([(f"f{i}", t) for i, t in enumerate(types)])
    return layout


def _narrowest_fields(values: np.ndarray) -> np.ndarray:
    """The columns of an int64 (requests, keys) array as one structured array, each field in
    the narrowest type that holds its values (one min and max over all columns: this runs
    once per batch record)."""
    types = tuple(
        next((kind for kind, low, high in _FIELD_LIMITS if low <= least and most <= high),
             _INT64)
        for least, most in zip(values.min(axis=0).tolist(), values.max(axis=0).tolist()))
    fields = np.empty(len(values), dtype=_layout(types))
    for index, name in enumerate(fields.dtype.names or ()):
        fields[name] = values[:, index]
    return fields


def compact(items: list, rids: list) -> Optional[RequestDetail]:
    """``items`` (decoded dicts, ``rids`` their mapped ids) as one :class:`RequestDetail`, or
    ``None`` when they do not all share one shape of plain integers."""
    first = items[0]
    if first.__class__ is not dict:
        return None
    key_list = list(first)
    width = len(key_list)
    try:
        pos = key_list.index("rid")
    except ValueError:
        return None
    if len({item.__class__ for item in items}) != 1:  # each a dict, as the first
        return None
    if not all(map(key_list.__eq__, map(list, items))):  # the same keys in the same order
        return None
    flat = list(chain.from_iterable(map(dict.values, items)))
    del flat[pos::width]  # the ids
    if flat and set(map(type, flat)) != {int}:
        return None
    try:
        values = np.array(flat, dtype=np.int64).reshape(len(items), width - 1)
    except OverflowError:
        return None
    return RequestDetail(_schema(tuple(key_list), pos)[0], rids, _narrowest_fields(values))
