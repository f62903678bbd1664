"""A column of datetime cells held as whole µs (a pandas extension array): 9 bytes a row.

The output tables' datetime columns (batch.csv's four, kvcache.csv's, request.csv's,
forward.csv's two, request_status.csv's) were object columns of ``writers.DateText`` cells, 48
bytes each plus the column's 8-byte pointer, held from each table's build to the end of the run:
about 2.4 million cells, 0.13 GB at x100. :class:`DateColumn` holds the µs (int64) and whether
each is known; a cell is made only when read (``[i]``, ``tolist()``, ``to_numpy()``): the
``DateText`` (or ``NO_DATE``) the object column held, so readers and writers see the same cells.
The writers turn it into text a chunk of rows at a time, as they do object columns of lazy
cells (the dtype's ``lazy_cells``).
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Sequence

import numpy as np
import pandas as pd
from pandas.api.extensions import ExtensionArray, ExtensionDtype, take

from otel_vllm_ascend.analysis.writers import NO_DATE, DateText


class DateColumnDtype(ExtensionDtype):
    """The dtype of :class:`DateColumn` (cells are ``DateText``, or ``NO_DATE``)."""

    name = "date_text"
    type = DateText
    kind = "O"
    na_value = NO_DATE
    lazy_cells = True  # the writers: text made a chunk of rows at a time, as for LazyText cells

    @classmethod
    def construct_array_type(cls) -> type:
        return DateColumn


class DateColumn(ExtensionArray):
    """Per row, whole µs since the epoch (``us``) and whether the time is known (``known``)."""

    _dtype = DateColumnDtype()

    def __init__(self, us: np.ndarray, known: np.ndarray) -> None:
        self.us = us
        self.known = known

    # -- what pandas needs ------------------------------------------------------------------
    @classmethod
    def _from_sequence(cls, scalars: Iterable, *, dtype: Any = None,
                       copy: bool = False) -> DateColumn:
        if isinstance(scalars, DateColumn):
            return scalars.copy() if copy else scalars
        cells = list(scalars)
        known = np.array([isinstance(cell, DateText) for cell in cells], dtype=bool)
        if not all(known[i] or cell is NO_DATE for i, cell in enumerate(cells)):
            raise TypeError("a DateColumn holds DateText cells and NO_DATE only")
        us = np.array([int(cell) if isinstance(cell, DateText) else 0 for cell in cells],
                      dtype="int64")
        return cls(us, known)

    @property
    def dtype(self) -> DateColumnDtype:
        return self._dtype

    def __len__(self) -> int:
        return len(self.us)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, np.integer)):
            return DateText(int(self.us[key])) if self.known[key] else NO_DATE
        if not isinstance(key, slice):
            key = pd.api.indexers.check_array_indexer(self, key)
        return DateColumn(self.us[key], self.known[key])

    @property
    def nbytes(self) -> int:
        return self.us.nbytes + self.known.nbytes

    def isna(self) -> np.ndarray:
        return np.zeros(len(self), dtype=bool)  # an unknown time is an empty cell, not NA

    def take(self, indices: Sequence[int], *, allow_fill: bool = False,
             fill_value: Any = None) -> DateColumn:
        return DateColumn(take(self.us, indices, allow_fill=allow_fill, fill_value=0),
                          take(self.known, indices, allow_fill=allow_fill, fill_value=False))

    def copy(self) -> DateColumn:
        return DateColumn(self.us.copy(), self.known.copy())

    @classmethod
    def _concat_same_type(cls, to_concat: Sequence[DateColumn]) -> DateColumn:
        return cls(np.concatenate([part.us for part in to_concat]),
                   np.concatenate([part.known for part in to_concat]))

    def __eq__(self, other: Any) -> Any:  # cell by cell, as the object column compared
        others = (other if isinstance(other, (DateColumn, list, np.ndarray))
                  else [other] * len(self))
        return np.array([a == b for a, b in zip(self.tolist(), others)], dtype=bool)

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        return self.to_numpy()

    def to_numpy(self, dtype: Any = None, copy: bool = False, na_value: Any = None
                 ) -> np.ndarray:
        out = np.empty(len(self), dtype=object)
        out[:] = self.tolist()
        return out

    def tolist(self) -> list:
        return [DateText(us) if known else NO_DATE
                for us, known in zip(self.us.tolist(), self.known.tolist())]

    def __iter__(self) -> Any:
        return iter(self.tolist())


def datetime_column_us(values: Any) -> DateColumn:
    """µs since the epoch -> a :class:`DateColumn`, whose cells are those
    ``writers.lazy_datetimes_us`` makes (for a table column: 9 bytes a row instead of 56):
    NaN / infinite unknown, the rest rounded to whole µs as it rounds them (to even)."""
    values = np.asarray(values, dtype="float64")
    known = np.isfinite(values)
    return DateColumn(np.round(np.where(known, values, 0.0)).astype("int64"), known)
