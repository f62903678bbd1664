"""A reusable JSON encoder for hot loops (capture messages, trace-table arguments).

``json.dumps`` builds a new C encoder on every call, a large share of the time for many small
dicts. :func:`make_encoder` builds one, with the given separators and otherwise ``json.dumps``'
defaults except the circular-reference check (values are attribute values and decoded JSON).
"""

from __future__ import annotations

import json
from typing import Any, Callable


def make_encoder(item_separator: str = ", ", key_separator: str = ": ") -> Callable[[Any], str]:
    """``json.dumps(value, separators=(item_separator, key_separator))``, built once."""
    plain = json.JSONEncoder(separators=(item_separator, key_separator))
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return plain.encode
    chunks = make(None, plain.default, json.encoder.encode_basestring_ascii, None,
                  key_separator, item_separator, False, False, True)
    join = "".join
    return lambda value: join(chunks(value, 0))
