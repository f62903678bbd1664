"""The records' request ids as int32 codes into one id table (a pandas extension array).

A record lists the requests it is about: a batch record hundreds, most records one. Held as
Python lists (shared by the records listing the same requests) they cost 8 bytes an id and
56 a list, and every list is one more small object the allocator cannot give back. Here each
distinct list is kept once as int32 codes into ``ids`` (one flat array with offsets: the
compressed sparse row layout), and each record holds the int32 number of its list (0: no
request). It is the layout the streaming design needs: typed columns a reader can take a
chunk of records at a time.

:class:`RidLists` reads like the column of lists it replaces: ``tolist()``,
``to_numpy(dtype=object)`` and iteration give ``list[str]`` (each distinct list made once per
call and shared by its records, as the reader made them), ``[i]`` one list; readers of many
records use :meth:`RidLists.lengths` and :meth:`RidLists.codes_of` instead, which make no list.
"""

from __future__ import annotations

from array import array
from itertools import chain
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray, ExtensionDtype, take


class RidTable:
    """The distinct id lists: list ``n`` is ``ids[codes[offsets[n]:offsets[n + 1]]]``; list 0
    is empty. Read-only once made."""

    __slots__ = ("ids", "offsets", "codes")

    def __init__(self, ids: np.ndarray, offsets: np.ndarray, codes: np.ndarray) -> None:
        self.ids = ids
        self.offsets = offsets
        self.codes = codes

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def ids_of(self, number: int) -> np.ndarray:
        """List ``number``'s ids (an object array: no new strings)."""
        return self.ids[self.codes[self.offsets[number]:self.offsets[number + 1]]]

    def __deepcopy__(self, memo: dict) -> RidTable:
        return self  # read-only: shared, never copied


_CHUNK_IDS = 16_384  # ids coded at a time (pandas sizes its hash table to the chunk)


def build_table(lists: Sequence[list]) -> tuple[RidTable, np.ndarray]:
    """The table of ``lists`` (the reader's shared lists) and each list's number in it.

    Lists are told apart by identity: the reader shares equal ones (every one-id list of a
    request, a step's batch list), so a list is stored once however many records hold it.
    Built while every column of the reader is still held (the read's peak): the distinct
    lists' ids are coded a chunk at a time into an array of its final length, never all
    copied at once."""
    number_of: dict[int, int] = {}  # id(list) -> number (every list is alive: no id reused)
    firsts = array("q")  # per distinct list, its first record
    numbers = array("i", bytes(4 * len(lists)))  # 0: no request
    for row, rids in enumerate(lists):
        if rids:
            number = number_of.get(id(rids))
            if number is None:
                number = number_of[id(rids)] = len(firsts) + 1
                firsts.append(row)
            numbers[row] = number
    del number_of
    sizes = np.fromiter(map(len, map(lists.__getitem__, firsts)), dtype=np.int64,
                        count=len(firsts))
    offsets = np.zeros(len(firsts) + 2, dtype=np.int64)
    np.cumsum(sizes, out=offsets[2:])
    codes = np.empty(int(offsets[-1]), dtype=np.int32)
    code_of: dict = {}
    begin = 0
    while begin < len(firsts):
        stop = max(int(np.searchsorted(offsets[2:], offsets[begin + 1] + _CHUNK_IDS,
                                       side="right")), begin + 1)
        flat = np.empty(int(offsets[stop + 1] - offsets[begin + 1]), dtype=object)
        flat[:] = list(chain.from_iterable(map(lists.__getitem__, firsts[begin:stop])))
        local, uniques = pd.factorize(flat)
        known = np.fromiter((code_of.setdefault(rid, len(code_of)) for rid in uniques),
                            dtype=np.int32, count=len(uniques))
        codes[offsets[begin + 1]:offsets[stop + 1]] = known[local]
        begin = stop
    ids = np.empty(len(code_of), dtype=object)
    ids[:] = list(code_of)  # the reader's own strings
    return RidTable(ids, offsets, codes), np.frombuffer(numbers, dtype=np.int32)


class RidListsDtype(ExtensionDtype):
    """The dtype of :class:`RidLists` (values are ``list[str]``)."""

    name = "rid_lists"
    type = list
    kind = "O"
    na_value = None

    @classmethod
    def construct_array_type(cls) -> type:
        return RidLists


class RidLists(ExtensionArray):
    """Per record, the number of its id list in a shared :class:`RidTable`."""

    _dtype = RidListsDtype()

    def __init__(self, table: RidTable, numbers: np.ndarray) -> None:
        self.table = table
        self.numbers = numbers

    @classmethod
    def from_lists(cls, lists: Sequence[list]) -> RidLists:
        table, numbers = build_table(lists)
        return cls(table, numbers)

    @classmethod
    def concat_parts(cls, parts: Iterable[RidLists],
                     links: Sequence[Optional[dict]] = ()) -> RidLists:
        """The parts one after the other, as :meth:`from_lists` of their lists would make
        them once ``links[i]`` (internal -> external id) had mapped part ``i``'s ids and
        equal lists of two or more ids had been made one list (the reference in this
        module's tests): the parallel reader's parts, each read and
        unpickled on its own (no list object shared between parts). Lists numbered in order
        of first appearance, ids in order of first appearance in those lists. No list made.

        The parts are taken one at a time (``parts`` may be an iterator that lets each go
        once taken: the merge's :func:`consumed`): each new list's codes are appended to the
        table at once, and a list of two or more ids is known again by the hash of its codes,
        checked against the codes kept (a few bytes a list, not a copy of its codes).
        """
        code_of: dict = {}
        number_of: dict[int, int] = {}  # hash of a 2+ id list's codes -> the first's number
        clashes: dict[bytes, int] = {}  # the codes of a list whose hash another list has
        table_codes = array("i")  # the new lists' codes, in order (C int: int32)
        offsets = array("q", (0, 0))  # list 0: no request
        numbers = []
        for index, part in enumerate(parts):
            table = part.table
            get = links[index].get if index < len(links) and links[index] else None
            # A mapped id may equal another of the part's ids: coded by value here.
            local = np.fromiter((code_of.setdefault(rid if get is None else get(rid, rid),
                                                    len(code_of)) for rid in table.ids),
                                dtype=np.int32, count=len(table.ids))
            codes = local[table.codes]
            del local
            part_offsets = table.offsets.tolist()
            mapped = np.zeros(len(table), dtype=np.int32)
            for number in range(1, len(table)):
                begin, end = part_offsets[number], part_offsets[number + 1]
                raw = codes[begin:end].tobytes()
                if end - begin >= 2:
                    key = hash(raw)
                    known = number_of.get(key)
                    if known is not None:
                        if table_codes[offsets[known]:offsets[known + 1]].tobytes() != raw:
                            known = clashes.get(raw)  # another list with that hash
                        if known is not None:
                            mapped[number] = known
                            continue
                        clashes[raw] = len(offsets) - 1
                    else:
                        number_of[key] = len(offsets) - 1
                mapped[number] = len(offsets) - 1
                table_codes.frombytes(raw)
                offsets.append(len(table_codes))
            numbers.append(mapped[part.numbers])
            del part, table, codes, mapped
        del number_of, clashes
        ids = np.empty(len(code_of), dtype=object)
        ids[:] = list(code_of)
        table = RidTable(ids, np.frombuffer(offsets, dtype=np.int64),
                         np.frombuffer(table_codes, dtype=np.int32) if len(table_codes)
                         else np.empty(0, dtype=np.int32))
        numbers = np.concatenate(numbers) if numbers else np.empty(0, dtype=np.int32)
        return cls(table, numbers)

    # -- what pandas needs ------------------------------------------------------------------
    @classmethod
    def _from_sequence(cls, scalars: Iterable, *, dtype: Any = None,
                       copy: bool = False) -> RidLists:
        if isinstance(scalars, RidLists):
            return scalars.copy() if copy else scalars
        return cls.from_lists([list(v) if v is not None else [] for v in scalars])

    @property
    def dtype(self) -> RidListsDtype:
        return self._dtype

    def __len__(self) -> int:
        return len(self.numbers)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return self.table.ids_of(int(self.numbers[key])).tolist()
        if not isinstance(key, slice):
            key = pd.api.indexers.check_array_indexer(self, key)
        return RidLists(self.table, self.numbers[key])

    @property
    def nbytes(self) -> int:
        return self.numbers.nbytes

    def isna(self) -> np.ndarray:
        return np.zeros(len(self), dtype=bool)

    def take(self, indices: Sequence[int], *, allow_fill: bool = False,
             fill_value: Any = None) -> RidLists:
        return RidLists(self.table, take(self.numbers, indices, allow_fill=allow_fill,
                                         fill_value=0))

    def copy(self) -> RidLists:
        return RidLists(self.table, self.numbers.copy())

    @classmethod
    def _concat_same_type(cls, to_concat: Sequence[RidLists]) -> RidLists:
        tables = {id(part.table) for part in to_concat}
        if len(tables) == 1:
            return cls(to_concat[0].table, np.concatenate([p.numbers for p in to_concat]))
        return cls.from_lists([rids for part in to_concat for rids in part.tolist()])

    def __eq__(self, other: Any) -> Any:
        others = other if isinstance(other, (RidLists, list, np.ndarray)) else [other] * len(self)
        return np.array([a == b for a, b in zip(self.tolist(), others)], dtype=bool)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        return self.to_numpy(dtype=dtype)

    def to_numpy(self, dtype: Any = None, copy: bool = False, na_value: Any = None
                 ) -> np.ndarray:
        out = np.empty(len(self), dtype=object)
        for row, rids in enumerate(self.tolist()):
            out[row] = rids
        return out

    def tolist(self) -> list:
        made: dict[int, list] = {}
        ids_of = self.table.ids_of
        out = []
        for number in self.numbers.tolist():
            rids = made.get(number)
            if rids is None:
                rids = made[number] = ids_of(number).tolist()
            out.append(rids)
        return out

    def __iter__(self) -> Iterator[list]:
        return iter(self.tolist())

    # -- what readers of many records use -----------------------------------------------------
    def lengths(self) -> np.ndarray:
        """Ids per record (int64), without making a list."""
        sizes = np.diff(self.table.offsets)
        return sizes[self.numbers]

    def codes_of(self, rows: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
        """(id code, position in ``rows``) of every (record, id) pair of the records at
        ``rows`` (all by default), in order: codes index ``self.table.ids``."""
        numbers = self.numbers if rows is None else self.numbers[rows]
        begins = self.table.offsets[numbers]
        sizes = self.table.offsets[numbers + 1] - begins
        record = np.repeat(np.arange(len(numbers), dtype=np.int32), sizes)
        return self.table.codes[_positions(begins, sizes)], record


def consumed(parts: list) -> Iterator:
    """The items of ``parts`` in order, each let go from the list once taken (so that the
    taker may free it before the next is taken)."""
    for index in range(len(parts)):
        part = parts[index]
        parts[index] = None
        yield part
        del part


def _positions(begins: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Every position of the ranges ``begins[i]`` .. ``begins[i] + sizes[i]``, in order."""
    within = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes,
                                                                       sizes)
    return np.repeat(begins, sizes) + within


class TableIds:
    """A :class:`~.rid_detail.RequestDetail`'s ids once the frame is built: its record's list
    in the table (the reader's list is then dropped). Reads like that list; ``np.asarray``
    gives the ids as an object array."""

    __slots__ = ("table", "number")

    def __init__(self, table: RidTable, number: int) -> None:
        self.table = table
        self.number = number

    def __len__(self) -> int:
        offsets = self.table.offsets
        return int(offsets[self.number + 1] - offsets[self.number])

    def __bool__(self) -> bool:
        return len(self) > 0

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        return self.table.ids_of(self.number)

    def __iter__(self) -> Iterator[str]:
        return iter(self.tolist())

    def __getitem__(self, index: Any) -> Any:
        return self.table.ids_of(self.number)[index]

    def __eq__(self, other: Any) -> bool:
        return self.tolist() == list(other)

    __hash__ = None  # type: ignore[assignment]

    def tolist(self) -> list:
        return self.table.ids_of(self.number).tolist()


def rid_sequence(column: pd.Series) -> Sequence:
    """A ``rids`` column as a sequence to index or pass to :mod:`.rid_pairs`: the
    :class:`RidLists` itself (a list made only for the record asked), or the lists of a plain
    object column (frames made by hand)."""
    values = column.array
    return values if isinstance(values, RidLists) else column.tolist()


def rid_lengths(lists: Any) -> np.ndarray:
    """Ids per record (int64) of a ``rids`` column, :class:`RidLists` or sequence of lists."""
    if isinstance(lists, pd.Series):
        lists = rid_sequence(lists)
    if isinstance(lists, RidLists):
        return lists.lengths()
    return np.fromiter(map(len, lists), dtype="int64", count=len(lists))
