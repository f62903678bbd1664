"""Integer columns held in the narrowest type that keeps every value.

Large captures hold millions of such numbers for the whole run (request details, step ids,
flow ids); readers get Python ints or widen before arithmetic, so the type never shows.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def fits(values: Any, dtype: Any) -> bool:
    """Whether every value of ``values`` lies in the range of the integer type ``dtype``."""
    values = np.asarray(values)
    if not values.size:
        return True
    limits = np.iinfo(dtype)
    return bool(limits.min <= values.min() and values.max() <= limits.max)


def narrowest(values: np.ndarray, *dtypes: Any) -> np.ndarray:
    """``values`` as the first of ``dtypes`` (narrowest first) that holds them all, else as
    they are; an empty array stays as it is."""
    if values.size:
        for dtype in dtypes:
            if fits(values, dtype):
                return values.astype(dtype)
    return values
