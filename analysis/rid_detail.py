"""A batch record's per-request dicts, held compactly.

A ``batchFrameworkProcessing`` (or ``modelExec``, ``specDecoding``) message lists one dict per
request it scheduled (``{"rid": ..., "iter": 0, "type": 0, "num_scheduled_tokens": 113, ...}``).
Held as Python dicts these are about 90 % of a large capture's memory (two million of them at
ten times the benchmark capture). When every dict of a record has the same keys in the same
order and every value but ``rid`` is a plain integer (what vLLM's handlers and the C library
write), :func:`compact` keeps them as one :class:`RequestDetail`: the key tuple (shared by all
records with that shape), the request ids and one integer array (int16 or int32 when the
values fit), 10-30 bytes per request instead of 700. Anything else stays a list of dicts.

A :class:`RequestDetail` reads like that list (length, truth, items as fresh dicts, ``repr``
identical to the list's), so builders that walk dicts need no change; the hot ones read whole
columns through :meth:`RequestDetail.column`.
"""

from __future__ import annotations

from typing import Any, Iterator, Optional

import numpy as np

_INT16_MAX = 2**15 - 1
_INT32_MAX = 2**31 - 1
_schemas: dict[tuple, tuple] = {}  # key tuple -> the one shared tuple (and its formats)


class RequestDetail:
    """The request dicts of one record: ``keys`` (``rid`` among them), ``rids``, ``values``.

    ``values`` is an int16, int32 or int64 array of shape (requests, keys - 1): the keys other than
    ``rid``, in order. Treat it as read-only, like every object in the records frame.
    """

    __slots__ = ("keys", "rids", "values")

    def __init__(self, keys: tuple, rids: list, values: np.ndarray) -> None:
        self.keys = keys
        self.rids = rids
        self.values = values

    def __len__(self) -> int:
        return len(self.rids)

    def __bool__(self) -> bool:
        return bool(self.rids)

    def _value_keys(self) -> tuple:
        return _schemas[self.keys][1]

    def __iter__(self) -> Iterator[dict]:
        keys = self.keys
        pos = keys.index("rid")
        for rid, row in zip(self.rids, self.values.tolist()):
            row.insert(pos, rid)
            yield dict(zip(keys, row))

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return list(self)[index]
        row = self.values[index].tolist()
        row.insert(self.keys.index("rid"), self.rids[index])
        return dict(zip(self.keys, row))

    def __eq__(self, other: Any) -> bool:
        if not isinstance(other, (list, tuple, RequestDetail)):
            return NotImplemented
        return list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        # Sent from a reading worker (read_parallel.py): the key tuple is registered again in
        # the receiving process, whose ``_schemas`` may not know it.
        return _restore, (self.keys, self.rids, self.values)

    def __repr__(self) -> str:
        """The text ``repr`` gives for the list of dicts (the reference's ``res_list``)."""
        keys = self.keys
        pos = keys.index("rid")
        item_format = _schemas[keys][2]
        rows = self.values.tolist()
        for rid, row in zip(self.rids, rows):
            row.insert(pos, repr(rid))
        return "[" + ", ".join([item_format % tuple(row) for row in rows]) + "]"

    def column(self, key: str) -> Optional[np.ndarray]:
        """One key's values as an integer array; ``None`` when the dicts lack the key."""
        value_keys = self._value_keys()
        if key not in value_keys:
            return None
        return self.values[:, value_keys.index(key)]


def _schema(keys: tuple, pos: int) -> tuple:
    schema = _schemas.get(keys)
    if schema is None:
        value_keys = keys[:pos] + keys[pos + 1:]
        item_format = "{" + ", ".join(
            repr(key).replace("%", "%%") + (": %s" if key == "rid" else ": %d")
            for key in keys) + "}"
        schema = _schemas[keys] = (keys, value_keys, item_format)
    return schema


def _restore(keys: tuple, rids: list, values: np.ndarray) -> RequestDetail:
    """A :class:`RequestDetail` unpickled: its key tuple the one this process shares."""
    return RequestDetail(_schema(keys, keys.index("rid"))[0], rids, values)


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
    try:
        rows = [list(item.values()) for item in items]
        if any([len(row) != width for row in rows]) or any(
                [list(item) != key_list for item in items]):
            return None
    except AttributeError:  # an item that is not a dict
        return None
    flat = [value for row in rows for value in row[:pos] + row[pos + 1:]]
    if flat and {value.__class__ for value in flat} != {int}:
        return None
    try:
        values = np.array(flat, dtype=np.int64).reshape(len(rows), width - 1)
    except OverflowError:
        return None
    if values.size:  # the narrowest type that holds them: decode steps' numbers are small
        low, high = values.min(), values.max()
        if -_INT16_MAX <= low and high <= _INT16_MAX:
            values = values.astype(np.int16)
        elif -_INT32_MAX <= low and high <= _INT32_MAX:
            values = values.astype(np.int32)
    return RequestDetail(_schema(tuple(key_list), pos)[0], rids, values)
