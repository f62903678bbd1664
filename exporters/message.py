"""Translation of one OpenTelemetry span into msserviceprofiler records.

Pure functions, no I/O: :func:`span_to_records` maps a finished ``ReadableSpan`` to the rows the
``ms_service`` exporter writes, following ``docs/span-contract.md``:

* an ordinary span -> one ``Mstx`` row with ``flag`` 2 (message ``type`` 2), preceded by one
  ``flag`` 1 row (``type`` 0) per span event;
* a zero-duration span with ``ms.record`` = ``event`` / ``link`` / ``metric`` -> one ``flag`` 1
  row (``type`` 0 / 3 / absent, as msserviceprofiler's Python API writes them);
* ``ms.record`` = ``meta`` -> ``Meta`` rows only, one per ``ms.meta.<key>`` attribute.

The message is the JSON text msserviceprofiler's Python API writes (``json.dumps`` with default
separators): keys ``domain``, ``name``, ``type``, ``rid`` first, then the other attributes in
their order, ``ms.metric.<N>`` as ``<N>=``, ``ms.metric_inc.<N>`` as ``<N>+``, ``ms.scope.<N>``
as ``scope#<N>``. Attributes with a ``.`` in their name that the contract does not map (OTel
namespaces such as ``gen_ai.*``) are for OTLP viewers and are not written.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterable, List, NamedTuple, Optional, Tuple

from opentelemetry.sdk.trace import ReadableSpan

from otel_vllm_ascend import contract

FLAG_EVENT = 1
FLAG_SPAN = 2

TYPE_EVENT = 0
TYPE_SPAN = 2
TYPE_LINK = 3

# Message keys the reference analyzer turns into columns next to its own and its Meta columns;
# a message key with one of these names makes it reject the whole file ("columns overlap").
RESERVED_KEYS = frozenset({
    "markId", "message", "pid", "tid", "start_time", "end_time", "during_time",
    "start_datetime", "end_datetime", "prof_id", "hostuid", "hostname", "ppid", "dpRankId",
})

_encode = json.JSONEncoder().encode  # same output as json.dumps(obj) with defaults, less overhead

_METRIC = contract.METRIC_PREFIX
_METRIC_INC = contract.METRIC_INC_PREFIX
_SCOPE = contract.SCOPE_PREFIX
_LEN_METRIC = len(_METRIC)
_LEN_METRIC_INC = len(_METRIC_INC)
_LEN_SCOPE = len(_SCOPE)
# ms.* attributes consumed by the header keys (domain, name, type, rid) or by the row itself.
_HEADER_ATTRS = frozenset({
    contract.DOMAIN, contract.RID, contract.RID_DETAIL, contract.RECORD, contract.TYPE,
})


_HEADER_KEYS = frozenset({"domain", "name", "type", "rid"})


class MstxRow(NamedTuple):
    """One ``Mstx`` row before the exporter numbers it (``markId``) and adds its ``pid``."""

    message: str
    flag: int
    timestamp: int
    end_timestamp: int
    tid: int


class Records(NamedTuple):
    """What one span becomes: Mstx rows in emission order, Meta (name, value) pairs, and the
    names of attributes that were left out because the reference analyzer cannot take them."""

    mstx: List[MstxRow]
    meta: List[Tuple[str, str]]
    rejected_keys: Tuple[str, ...]


def span_to_records(span: ReadableSpan, fallback_tid: Optional[int] = None) -> Records:
    """Translate one finished span. ``fallback_tid`` is used when the span carries no
    ``thread.id`` (default: the calling thread's native id)."""
    attrs = span.attributes or {}
    record = attrs.get(contract.RECORD)
    if record == contract.RECORD_META:
        return Records([], _meta_pairs(attrs), ())

    tid = attrs.get(contract.THREAD_ID)
    if not isinstance(tid, int) or isinstance(tid, bool):
        tid = fallback_tid if fallback_tid is not None else threading.get_native_id()
    domain = attrs.get(contract.DOMAIN)
    start = span.start_time or 0
    rejected: List[str] = []

    if record is None:
        rows = [_event_row(event, domain, tid, rejected) for event in span.events]
        end = span.end_time if span.end_time is not None else start
        message = _message(span.name, TYPE_SPAN, attrs, rejected)
        rows.append(MstxRow(message, FLAG_SPAN, start, end, tid))
        return Records(rows, [], tuple(rejected))

    if record == contract.RECORD_LINK:
        message = _message(None, TYPE_LINK, attrs, rejected)
    elif record == contract.RECORD_METRIC:
        message = _message(None, None, attrs, rejected)
    else:  # "event" and any unknown record kind: a plain event mark
        message = _message(span.name, TYPE_EVENT, attrs, rejected)
    return Records([MstxRow(message, FLAG_EVENT, start, start, tid)], [], tuple(rejected))


def message_dict(name: Optional[str], default_type: Optional[int], attrs: Any,
                 inherited_domain: Any = None, rejected: Optional[List[str]] = None) -> dict:
    """The message as a dict, keys in the order they are written."""
    out: dict = {}
    domain = attrs.get(contract.DOMAIN, inherited_domain)
    if domain is not None:
        out["domain"] = domain
    if name is not None:
        out["name"] = name
    msg_type = attrs.get(contract.TYPE, default_type)
    if msg_type is not None:
        out["type"] = msg_type
    rid = _rid(attrs)
    if rid is not None:
        out["rid"] = rid
    for key, value in attrs.items():
        if "." in key:
            if key.startswith("ms."):
                if key in _HEADER_ATTRS:
                    continue
                if key.startswith(_METRIC):
                    key = key[_LEN_METRIC:] + "="
                elif key.startswith(_METRIC_INC):
                    key = key[_LEN_METRIC_INC:] + "+"
                elif key.startswith(_SCOPE):
                    key = "scope#" + key[_LEN_SCOPE:]
                elif key == contract.LINK_FROM:
                    key = "from"
                elif key == contract.LINK_TO:
                    key = "to"
                else:
                    continue  # ms.meta.* outside a meta record, unknown ms.* names
            else:
                continue  # OTel namespaces: OTLP viewers only
        elif key in RESERVED_KEYS:
            if rejected is not None:
                rejected.append(key)
            continue
        elif key in _HEADER_KEYS:
            continue  # the contract's own domain/name/type/rid win over a same-named attribute
        out[key] = list(value) if isinstance(value, tuple) else value
    return out


def _message(name: Optional[str], default_type: Optional[int], attrs: Any,
             rejected: List[str], inherited_domain: Any = None) -> str:
    return _encode(message_dict(name, default_type, attrs, inherited_domain, rejected))


def _event_row(event: Any, span_domain: Any, tid: int, rejected: List[str]) -> MstxRow:
    attrs = event.attributes or {}
    message = _message(event.name, TYPE_EVENT, attrs, rejected, inherited_domain=span_domain)
    return MstxRow(message, FLAG_EVENT, event.timestamp, event.timestamp, tid)


def _rid(attrs: Any) -> Any:
    detail = attrs.get(contract.RID_DETAIL)
    if detail is not None:
        try:
            return json.loads(detail)
        except (TypeError, ValueError):
            pass  # unreadable detail: fall back to the plain ids below
    rid = attrs.get(contract.RID)
    if isinstance(rid, tuple):
        return list(rid)
    return rid


def _meta_pairs(attrs: Any) -> List[Tuple[str, str]]:
    prefix = contract.META_PREFIX
    cut = len(prefix)
    return [(key[cut:], str(value)) for key, value in attrs.items() if key.startswith(prefix)]


def is_contract_span(span: ReadableSpan, scope_prefix: str = "otel_vllm_ascend") -> bool:
    """True for spans recorded under the span contract (our scope, or any ``ms.*`` header);
    spans of other instrumentations (vLLM's own ``llm_request``, HTTP servers) are not."""
    scope = span.instrumentation_scope
    if scope is not None and scope.name.startswith(scope_prefix):
        return True
    attrs = span.attributes or {}
    return contract.DOMAIN in attrs or contract.RECORD in attrs


def iter_records(spans: Iterable[ReadableSpan],
                 fallback_tid: Optional[int] = None) -> Iterable[Records]:
    """:func:`span_to_records` for every contract span of ``spans``."""
    for span in spans:
        if is_contract_span(span):
            yield span_to_records(span, fallback_tid)
