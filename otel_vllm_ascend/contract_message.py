"""The span contract's message mapping, once: span attributes -> msserviceprofiler message keys.

Pure and dependency-free (no OpenTelemetry SDK, no pandas), so both sides of the contract can use
it: the analyzer's OTLP reader builds the message the ``ms_service`` exporter would have written
from the same rules, and the exporter (``exporters/message.py``) writes :func:`message_dict`'s
result as JSON. The exporter's hot path needs two things from here, both kept cheap: a cache
from attribute name to message key (attribute names are few), and a ``rid`` passed in, so it
can splice ``ms.rid_detail``'s JSON text into the message rather than decode and re-encode it.
``tests/unit/test_contract_message.py`` holds the written JSON to this mapping, key order
included.

Rules (docs/span-contract.md):

* header keys first, in this order: ``domain`` (``ms.domain``, or the enclosing span's for an
  event), ``name``, ``type`` (``ms.type`` or the record kind's), ``rid`` (``ms.rid_detail``
  decoded, else ``ms.rid``);
* then the other attributes in their order: ``ms.metric.<N>`` -> ``<N>=``,
  ``ms.metric_inc.<N>`` -> ``<N>+``, ``ms.scope.<N>`` -> ``scope#<N>``, ``ms.link.from`` /
  ``ms.link.to`` -> ``from`` / ``to``; a name without a ``.`` unchanged, except the header keys
  (the contract's own win) and ``RESERVED_KEYS`` (left out: the reference analyzer would reject
  the file); every other dotted name (OTel namespaces, unknown ``ms.*``) is for OTLP viewers
  only and left out;
* by record kind (``ms.record``): none -> a span, ``type`` 2, its events ``type`` 0; ``link``
  -> no ``name``, ``type`` 3; ``metric`` -> no ``name``, no ``type``; ``event`` or unknown ->
  ``type`` 0; ``meta`` -> no message (Meta rows).
"""

from __future__ import annotations

import json
from typing import Any, List, Mapping, Optional, Tuple, Union

from otel_vllm_ascend import contract

TYPE_EVENT = 0
TYPE_SPAN = 2
TYPE_LINK = 3

HEADER_KEYS = ("domain", "name", "type", "rid")

# Message keys the reference analyzer turns into columns next to its own and its Meta columns;
# a message key with one of these names makes it reject the whole file ("columns overlap").
RESERVED_KEYS = frozenset({
    "markId", "message", "pid", "tid", "start_time", "end_time", "during_time",
    "start_datetime", "end_datetime", "prof_id", "hostuid", "hostname", "ppid", "dpRankId",
})

# ms.* attributes consumed by the header keys or by the record itself.
_HEADER_ATTRS = frozenset({
    contract.DOMAIN, contract.RID, contract.RID_DETAIL, contract.RECORD, contract.TYPE,
})


class _Rejected:
    def __repr__(self) -> str:
        return "REJECTED"


REJECTED = _Rejected()  # message_key's answer for a reserved key


def message_key(attribute: str) -> Union[str, None, _Rejected]:
    """The message key an attribute is written under; None if it is not written at all;
    ``REJECTED`` if it is left out because its name is reserved."""
    if "." in attribute:
        if not attribute.startswith("ms.") or attribute in _HEADER_ATTRS:
            return None
        for prefix, make in ((contract.METRIC_PREFIX, lambda n: n + "="),
                             (contract.METRIC_INC_PREFIX, lambda n: n + "+"),
                             (contract.SCOPE_PREFIX, lambda n: "scope#" + n)):
            if attribute.startswith(prefix):
                return make(attribute[len(prefix):])
        if attribute == contract.LINK_FROM:
            return "from"
        if attribute == contract.LINK_TO:
            return "to"
        return None  # ms.meta.* outside a meta record, unknown ms.* names
    if attribute in RESERVED_KEYS:
        return REJECTED
    if attribute in HEADER_KEYS:
        return None
    return attribute


def record_header(record: Optional[str], span_name: str) -> Tuple[Optional[str], Optional[int]]:
    """(message ``name``, default ``type``) of a span by its ``ms.record`` kind (not ``meta``)."""
    if record is None:
        return span_name, TYPE_SPAN
    if record == contract.RECORD_LINK:
        return None, TYPE_LINK
    if record == contract.RECORD_METRIC:
        return None, None
    return span_name, TYPE_EVENT


def _decode_detail(detail: Any) -> Any:
    try:
        return json.loads(detail) if isinstance(detail, (str, bytes)) else None
    except ValueError:
        return None  # unreadable detail: the plain ids are used instead


_RID_FROM_ATTRS = object()
# The header attributes as module globals: message_dict runs once per written record.
_DOMAIN, _TYPE = contract.DOMAIN, contract.TYPE
_RID, _RID_DETAIL = contract.RID, contract.RID_DETAIL


def message_dict(name: Optional[str], default_type: Optional[int], attrs: Mapping[str, Any],
                 inherited_domain: Any = None, rejected: Optional[List[str]] = None,
                 rid: Any = _RID_FROM_ATTRS) -> dict:
    """The message of one record as a dict, keys in the order they are written.

    ``rejected`` (optional) collects the attribute names left out as reserved. ``rid``, when
    given, is written as the ``rid`` value instead of the one read from ``ms.rid_detail`` /
    ``ms.rid`` (the exporter passes a placeholder it replaces with the detail's JSON text).
    """
    out: dict = {}
    domain = attrs.get(_DOMAIN, inherited_domain)
    if domain is not None:
        out["domain"] = domain
    if name is not None:
        out["name"] = name
    msg_type = attrs.get(_TYPE, default_type)
    if msg_type is not None:
        out["type"] = msg_type
    if rid is _RID_FROM_ATTRS:  # ms.rid_detail decoded, else ms.rid
        detail = attrs.get(_RID_DETAIL)
        rid = _decode_detail(detail) if detail is not None else None
        if rid is None:
            rid = attrs.get(_RID)
    if rid is not None:
        out["rid"] = list(rid) if rid.__class__ is tuple else rid
    cache = _KEY_CACHE
    for attribute, value in attrs.items():
        key = cache.get(attribute, _MISS)
        if key is _MISS:
            key = message_key(attribute)
            if len(cache) < _KEY_CACHE_LIMIT:
                cache[attribute] = key
        if key is None:
            continue
        if key is REJECTED:
            if rejected is not None:
                rejected.append(attribute)
            continue
        # Tuples (the SDK's sequence attributes) are written as JSON lists.
        out[key] = list(value) if value.__class__ is tuple else value
    return out


_MISS = object()
_KEY_CACHE: dict = {}  # attribute name -> message_key's answer
_KEY_CACHE_LIMIT = 4096  # attribute names are few; a misbehaving handler must not grow it
