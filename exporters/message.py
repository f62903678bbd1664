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
from typing import Any, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from opentelemetry.sdk.trace import ReadableSpan

from otel_vllm_ascend import contract
from otel_vllm_ascend.json_encoding import make_encoder

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



_encode = make_encoder()  # json.dumps' default separators, as the reference writes

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
    mstx: List[tuple] = []
    meta: List[Tuple[str, str]] = []
    rejected: List[str] = []
    _translate(span, fallback_tid, mstx, meta, rejected)
    return Records([MstxRow(*row) for row in mstx], meta, tuple(rejected))


def translate_batch(spans: Iterable[ReadableSpan], fallback_tid: Optional[int] = None,
                    ) -> Tuple[List[tuple], List[Tuple[str, str]], List[str]]:
    """Every contract span of ``spans`` at once: Mstx rows as plain
    ``(message, flag, timestamp, endTimestamp, tid)`` tuples in emission order, Meta pairs, and
    the rejected attribute names (the exporter's fast path, same rows as
    :func:`span_to_records`)."""
    if fallback_tid is None:
        fallback_tid = threading.get_native_id()
    mstx: List[tuple] = []
    meta: List[Tuple[str, str]] = []
    rejected: List[str] = []
    for span in spans:
        if is_contract_span(span):
            _translate(span, fallback_tid, mstx, meta, rejected)
    return mstx, meta, rejected


def translate_records(records: Iterable[tuple]
                      ) -> Tuple[List[tuple], List[Tuple[str, str]], List[str]]:
    """What :func:`translate_batch` gives for spans, from span-shaped records
    ``(name, start_ns, end_ns, attributes, events, tid)`` with events as
    ``(name, timestamp_ns, attributes)``: the recorder's direct path, which writes the file
    without building SDK spans (attributes as the SDK would store them)."""
    mstx: List[tuple] = []
    meta: List[Tuple[str, str]] = []
    rejected: List[str] = []
    for name, start, end, attrs, events, tid in records:
        _translate_parts(name, start, end, attrs, events, tid, mstx, meta, rejected)
    return mstx, meta, rejected


def _translate(span: ReadableSpan, fallback_tid: Optional[int], mstx: List[tuple],
               meta: List[Tuple[str, str]], rejected: List[str]) -> None:
    attrs = _plain(span)
    tid = attrs.get(contract.THREAD_ID)
    if tid.__class__ is not int:
        tid = fallback_tid if fallback_tid is not None else threading.get_native_id()
    events = span.events
    if events:
        events = [(event.name, event.timestamp, _plain(event)) for event in events]
    _translate_parts(span.name, span.start_time or 0, span.end_time, attrs, events, tid, mstx,
                     meta, rejected)


def _translate_parts(name: str, start: int, end: Optional[int], attrs: Mapping[str, Any],
                     events: Any, tid: int, mstx: List[tuple], meta: List[Tuple[str, str]],
                     rejected: List[str]) -> None:
    record = attrs.get(contract.RECORD)
    if record == contract.RECORD_META:
        meta.extend(_meta_pairs(attrs))
        return

    if record is None:
        if events:
            domain = attrs.get(contract.DOMAIN)
            for event_name, ts, event_attrs in events:
                mstx.append((_message(event_name, TYPE_EVENT, event_attrs, rejected, domain),
                             FLAG_EVENT, ts, ts, tid))
        mstx.append((_message(name, TYPE_SPAN, attrs, rejected), FLAG_SPAN, start,
                     end if end is not None else start, tid))
        return

    if record == contract.RECORD_LINK:
        message = _message(None, TYPE_LINK, attrs, rejected)
    elif record == contract.RECORD_METRIC:
        message = _message(None, None, attrs, rejected)
    else:  # "event" and any unknown record kind: a plain event mark
        message = _message(name, TYPE_EVENT, attrs, rejected)
    mstx.append((message, FLAG_EVENT, start, start, tid))


def _plain(holder: Any) -> Mapping[str, Any]:
    # The SDK wraps attributes in BoundedAttributes behind a mappingproxy, whose generic Mapping
    # methods cost several times a dict's; read the dict underneath when it is there.
    bounded = getattr(holder, "_attributes", None)
    raw = getattr(bounded, "_dict", None)
    if raw.__class__ is dict:
        return raw
    attrs = holder.attributes
    return attrs if attrs is not None else {}


def message_dict(name: Optional[str], default_type: Optional[int], attrs: Mapping[str, Any],
                 inherited_domain: Any = None) -> dict:
    """The message of a record as a dict, keys in the order they are written."""
    return json.loads(_message(name, default_type, attrs, [], inherited_domain))


def _message(name: Optional[str], default_type: Optional[int], attrs: Mapping[str, Any],
             rejected: List[str], inherited_domain: Any = None) -> str:
    out: dict = {}
    domain = attrs.get(contract.DOMAIN, inherited_domain)
    if domain is not None:
        out["domain"] = domain
    if name is not None:
        out["name"] = name
    msg_type = attrs.get(contract.TYPE, default_type)
    if msg_type is not None:
        out["type"] = msg_type
    detail = attrs.get(contract.RID_DETAIL)
    splice = False
    rid = None
    if detail is not None:
        if detail.__class__ is str and _looks_like_json_list(detail):
            # The detail is JSON text already: splice it in rather than decoding and
            # re-encoding a list of dicts per batch record.
            rid = _RID_PLACEHOLDER
            splice = True
        else:
            rid = _parse_detail(detail)
    if rid is None:
        rid = attrs.get(contract.RID)
    if rid is not None:
        out["rid"] = list(rid) if rid.__class__ is tuple else rid
    _add_other_keys(out, attrs, rejected)
    if splice:
        return _encode(out).replace(_RID_PLACEHOLDER_JSON, detail, 1)
    return _encode(out)


_RID_PLACEHOLDER = "\x00rid_detail\x00"
_RID_PLACEHOLDER_JSON = _encode(_RID_PLACEHOLDER)


def _looks_like_json_list(text: str) -> bool:
    # A shape check only: the handlers write the detail with json.dumps, and decoding it to
    # validate would double the cost of a batch record (docs/exporters.md).
    return text[:1] == "[" and text[-1:] == "]" and "\x00" not in text


def _parse_detail(detail: Any) -> Any:
    try:
        return json.loads(detail)
    except (TypeError, ValueError):
        return None  # unreadable detail: the plain ids are used instead


def _add_other_keys(out: dict, attrs: Mapping[str, Any], rejected: Optional[List[str]]) -> None:
    cache = _KEY_CACHE
    for key, value in attrs.items():
        out_key = cache.get(key, _MISS)
        if out_key is _MISS:
            out_key = _message_key(key)
            if len(cache) < _KEY_CACHE_LIMIT:
                cache[key] = out_key
        if out_key is None:
            continue
        if out_key is _REJECTED:
            if rejected is not None:
                rejected.append(key)
            continue
        out[out_key] = list(value) if value.__class__ is tuple else value


_MISS = object()
_REJECTED = object()
_KEY_CACHE: dict = {}  # attribute name -> message key, None (not written) or _REJECTED
_KEY_CACHE_LIMIT = 4096  # attribute names are few; a misbehaving handler must not grow it


def _message_key(key: str) -> Any:
    """The message key an attribute is written under, None if it is not, or ``_REJECTED``."""
    if "." in key:
        if not key.startswith("ms.") or key in _HEADER_ATTRS:
            return None  # OTel namespaces are for OTLP viewers; header attrs are written first
        if key.startswith(_METRIC):
            return key[_LEN_METRIC:] + "="
        if key.startswith(_METRIC_INC):
            return key[_LEN_METRIC_INC:] + "+"
        if key.startswith(_SCOPE):
            return "scope#" + key[_LEN_SCOPE:]
        if key == contract.LINK_FROM:
            return "from"
        if key == contract.LINK_TO:
            return "to"
        return None  # ms.meta.* outside a meta record, unknown ms.* names
    if key in RESERVED_KEYS:
        return _REJECTED
    if key in _HEADER_KEYS:
        return None  # the contract's own domain/name/type/rid win over a same-named attribute
    return key


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
