"""The records' key/value dicts (``metrics``, ``metric_incs``, ``scopes``, ``attrs``) held as
typed columns per key tuple (a pandas extension array).

Most records carry a small dict of the same keys (a KV status's five block counts, a queue
size, a link's ``from`` and ``to``). Held as Python dicts they cost about 200 bytes each plus
an eight-byte pointer per record, and each is one more small object the allocator cannot give
back. Here every distinct key tuple (a *shape*, shape 0 the empty dict) has one table of its
dicts' values, one row per distinct dict: float64 when every value is a Python float (metric
values always are), else an object array holding the values as read. Each record holds its
shape (int8 while there are few) and its row in that table (int32): 5 bytes a record.

:class:`RecordDicts` reads like the column of dicts it replaces: ``tolist()``, iteration and
``to_numpy(dtype=object)`` give dicts (each distinct dict made once per call and shared by its
records), ``[i]`` one dict; keys keep their order and values their type (``1``, ``1.0`` and
``True`` stay as written). Readers of many records use :func:`key_values` /
:func:`key_floats` (one key's values, no dict made) and :func:`has_keys`.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray, ExtensionDtype, take

from otel_vllm_ascend.analysis.narrow_ints import narrowest


class DictTable:
    """The distinct dicts: ``shapes[s]`` the key tuple of shape ``s`` (shape 0: no key),
    ``values[s]`` a (dicts, keys) array of their values. Read-only once made."""

    __slots__ = ("shapes", "values", "_position")

    def __init__(self, shapes: list, values: list) -> None:
        self.shapes = shapes
        self.values = values
        # key -> [(shape, index of the key in it)]
        self._position: dict[str, list[tuple[int, int]]] = {}
        for shape, keys in enumerate(shapes):
            for index, key in enumerate(keys):
                self._position.setdefault(key, []).append((shape, index))

    def dict_of(self, shape: int, row: int) -> dict:
        keys = self.shapes[shape]
        if not keys:
            return {}
        return dict(zip(keys, self.values[shape][row].tolist()))

    def positions(self, key: str) -> list[tuple[int, int]]:
        return self._position.get(key, [])

    def __deepcopy__(self, memo: dict) -> DictTable:
        return self  # read-only: shared, never copied


def build_table(dicts: Sequence[dict]) -> tuple[DictTable, np.ndarray, np.ndarray]:
    """The table of ``dicts`` and each record's (shape, row). A dict object held by several
    records (the reader shares repeated small dicts) is stored once."""
    shape_of: dict[tuple, int] = {(): 0}
    shapes: list[tuple] = [()]
    flat: list[list] = [[]]  # per shape, its dicts' values one after the other
    counts = [0]
    seen: dict[int, tuple[int, int]] = {}  # id(dict) -> (shape, row): every dict is alive
    shape_codes = np.zeros(len(dicts), dtype=np.int32)
    rows = np.zeros(len(dicts), dtype=np.int32)
    for record, values in enumerate(dicts):
        if not values:
            continue
        got = seen.get(id(values))
        if got is None:
            keys = tuple(values)
            shape = shape_of.get(keys)
            if shape is None:
                shape = shape_of[keys] = len(shapes)
                shapes.append(keys)
                flat.append([])
                counts.append(0)
            flat[shape].extend(values.values())
            got = seen[id(values)] = (shape, counts[shape])
            counts[shape] += 1
        shape_codes[record], rows[record] = got
    del seen
    tables = []
    for keys, values, count in zip(shapes, flat, counts):
        if all(value.__class__ is float for value in values):
            table = np.array(values, dtype=np.float64)
        else:
            table = _objects(values)
        tables.append(table.reshape(count, len(keys)))
        values.clear()
    return (DictTable(shapes, tables),
            narrowest(shape_codes, np.int8, np.int16), rows)


class RecordDictsDtype(ExtensionDtype):
    """The dtype of :class:`RecordDicts` (values are ``dict``)."""

    name = "record_dicts"
    type = dict
    kind = "O"
    na_value = None

    @classmethod
    def construct_array_type(cls) -> type:
        return RecordDicts


class RecordDicts(ExtensionArray):
    """Per record, its dict's shape and row in a shared :class:`DictTable`."""

    _dtype = RecordDictsDtype()

    def __init__(self, table: DictTable, shapes: np.ndarray, rows: np.ndarray) -> None:
        self.table = table
        self.shapes = shapes
        self.rows = rows

    @classmethod
    def from_dicts(cls, dicts: Sequence[dict]) -> RecordDicts:
        if isinstance(dicts, RecordDicts):  # made already (the parallel reader's parts)
            return dicts
        return cls(*build_table(dicts))

    @classmethod
    def concat_parts(cls, parts: Sequence[RecordDicts]) -> RecordDicts:
        """The parts one after the other, as :meth:`from_dicts` of their dicts would make
        them when no dict object is shared between parts (the parallel reader's parts, each
        unpickled on its own): shapes numbered in order of first appearance, each shape's
        rows the parts' rows in turn, float64 where every part's are. No dict is made."""
        shape_of: dict[tuple, int] = {(): 0}
        shapes: list[tuple] = [()]
        pieces: list[list[np.ndarray]] = [[]]
        maps = []
        for part in parts:
            local = np.zeros(len(part.table.shapes), dtype=np.int32)
            for number, keys in enumerate(part.table.shapes):
                shape = shape_of.get(keys)
                if shape is None:
                    shape = shape_of[keys] = len(shapes)
                    shapes.append(keys)
                    pieces.append([])
                local[number] = shape
            maps.append(local)
        counts = np.zeros(len(shapes), dtype=np.int64)  # each shape's rows in earlier parts
        shape_codes = np.empty(sum(len(part) for part in parts), dtype=np.int32)
        rows = np.empty(len(shape_codes), dtype=np.int32)
        begin = 0
        for part, local in zip(parts, maps):
            end = begin + len(part)
            codes = local[part.shapes]
            shape_codes[begin:end] = codes
            rows[begin:end] = part.rows + counts[codes]
            for number, table in enumerate(part.table.values):
                if number:  # shape 0: no values
                    pieces[local[number]].append(table)
                    counts[local[number]] += len(table)
            begin = end
        tables = [np.empty((0, 0), dtype=np.float64)]
        for tables_of in pieces[1:]:
            if all(table.dtype == np.float64 for table in tables_of):
                tables.append(np.concatenate(tables_of))
            else:  # as from_dicts: an object array of the values as read (floats stay floats)
                tables.append(np.concatenate([table.astype(object) for table in tables_of]))
        return cls(DictTable(shapes, tables), narrowest(shape_codes, np.int8, np.int16), rows)

    # -- what pandas needs ------------------------------------------------------------------
    @classmethod
    def _from_sequence(cls, scalars: Iterable, *, dtype: Any = None,
                       copy: bool = False) -> RecordDicts:
        if isinstance(scalars, RecordDicts):
            return scalars.copy() if copy else scalars
        return cls.from_dicts([v if v is not None else {} for v in scalars])

    @property
    def dtype(self) -> RecordDictsDtype:
        return self._dtype

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return self.table.dict_of(int(self.shapes[key]), int(self.rows[key]))
        if not isinstance(key, slice):
            key = pd.api.indexers.check_array_indexer(self, key)
        return RecordDicts(self.table, self.shapes[key], self.rows[key])

    @property
    def nbytes(self) -> int:
        return self.shapes.nbytes + self.rows.nbytes

    def isna(self) -> np.ndarray:
        return np.zeros(len(self), dtype=bool)

    def take(self, indices: Sequence[int], *, allow_fill: bool = False,
             fill_value: Any = None) -> RecordDicts:
        return RecordDicts(self.table,
                           take(self.shapes, indices, allow_fill=allow_fill, fill_value=0),
                           take(self.rows, indices, allow_fill=allow_fill, fill_value=0))

    def copy(self) -> RecordDicts:
        return RecordDicts(self.table, self.shapes.copy(), self.rows.copy())

    @classmethod
    def _concat_same_type(cls, to_concat: Sequence[RecordDicts]) -> RecordDicts:
        if len({id(part.table) for part in to_concat}) == 1:
            return cls(to_concat[0].table,
                       np.concatenate([p.shapes for p in to_concat]),
                       np.concatenate([p.rows for p in to_concat]))
        return cls.from_dicts([d for part in to_concat for d in part.tolist()])

    def __eq__(self, other: Any) -> Any:
        others = (other if isinstance(other, (RecordDicts, list, np.ndarray))
                  else [other] * len(self))
        return np.array([a == b for a, b in zip(self.tolist(), others)], dtype=bool)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        return self.to_numpy(dtype=dtype)

    def to_numpy(self, dtype: Any = None, copy: bool = False, na_value: Any = None
                 ) -> np.ndarray:
        return _objects(self.tolist())

    def tolist(self) -> list:
        made: dict[tuple[int, int], dict] = {}
        dict_of = self.table.dict_of
        out = []
        for key in zip(self.shapes.tolist(), self.rows.tolist()):
            value = made.get(key)
            if value is None:
                value = made[key] = dict_of(*key)
            out.append(value)
        return out

    def __iter__(self) -> Iterator[dict]:
        return iter(self.tolist())

    # -- what readers of many records use -----------------------------------------------------
    def has_keys(self) -> np.ndarray:
        """Per record: is its dict not empty?"""
        return self.shapes != 0

    def key_values(self, key: str, missing: Any = None) -> np.ndarray:
        """``d.get(key, missing)`` of every record's dict ``d`` (an object array; values as
        read)."""
        out = np.full(len(self), missing, dtype=object)
        for shape, index in self.table.positions(key):
            where = np.flatnonzero(self.shapes == shape)
            if len(where):  # array to array: a value that is a list stays one object
                out[where] = self.table.values[shape][self.rows[where], index]
        return out

    def key_floats(self, key: str) -> np.ndarray:
        """``d.get(key)`` as float64 (NaN where a dict lacks the key or its value is not a
        number); the values of a metric column."""
        out = np.full(len(self), np.nan)
        for shape, index in self.table.positions(key):
            where = np.flatnonzero(self.shapes == shape)
            if not len(where):
                continue
            values = self.table.values[shape][self.rows[where], index]
            if values.dtype != np.float64:
                values = np.array([_float(v) for v in values.tolist()], dtype=np.float64)
            out[where] = values
        return out


def _objects(values: list) -> np.ndarray:
    """An object array of ``values``, each one element (numpy would unpack equal-length
    lists into a second dimension)."""
    out = np.empty(len(values), dtype=object)
    for index, value in enumerate(values):
        out[index] = value
    return out


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError, OverflowError):
        return float("nan")


def key_values(column: pd.Series, key: str, missing: Any = None,
               rows: Optional[np.ndarray] = None) -> np.ndarray:
    """``d.get(key, missing)`` of every dict of a dict column (:class:`RecordDicts`, or dicts
    in an object column: frames made by hand) as an object array; with ``rows`` (positions),
    of those records only (a reader of a few records makes no array of every record)."""
    values = column.array
    if isinstance(values, RecordDicts):
        return (values if rows is None else values[rows]).key_values(key, missing)
    dicts = column.tolist() if rows is None else column.iloc[rows].tolist()
    return _objects([d.get(key, missing) if d else missing for d in dicts])


def key_floats(column: pd.Series, key: str) -> np.ndarray:
    """``d.get(key)`` of every dict of a dict column as float64, NaN where a dict lacks the
    key or its value is not a number (:meth:`RecordDicts.key_floats`; dicts in an object
    column: frames made by hand)."""
    values = column.array
    if isinstance(values, RecordDicts):
        return values.key_floats(key)
    return np.array([_float(d.get(key)) if d else np.nan for d in column.tolist()],
                    dtype=np.float64)


def has_keys(column: pd.Series) -> np.ndarray:
    """Per record: is its dict not empty?"""
    values = column.array
    if isinstance(values, RecordDicts):
        return values.has_keys()
    return np.fromiter((bool(d) for d in column.tolist()), dtype=bool, count=len(column))
