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
namespaces such as ``gen_ai.*``) are for OTLP viewers and are not written. The mapping itself is
``otel_vllm_ascend.contract_message``'s, the one the analyzer reads OTLP captures with; this
module adds the rows, the Meta pairs and the JSON text.
"""

from __future__ import annotations

import json
import threading
from typing import Any, Iterable, List, Mapping, NamedTuple, Optional, Tuple

from opentelemetry.sdk.trace import ReadableSpan

from otel_vllm_ascend import contract
from otel_vllm_ascend.contract_message import TYPE_EVENT, TYPE_SPAN, record_header
from otel_vllm_ascend.contract_message import message_dict as _message_dict
from otel_vllm_ascend.json_encoding import make_encoder

FLAG_EVENT = 1
FLAG_SPAN = 2

_encode = make_encoder()  # json.dumps' default separators, as the reference writes


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

    # event, link, metric and unknown kinds: one mark, named and typed by its kind
    record_name, record_type = record_header(record, name)
    mstx.append((_message(record_name, record_type, attrs, rejected), FLAG_EVENT, start, start,
                 tid))


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
    """The message of a record as written, read back into a dict (keys in written order)."""
    return json.loads(_message(name, default_type, attrs, [], inherited_domain))


def _message(name: Optional[str], default_type: Optional[int], attrs: Mapping[str, Any],
             rejected: List[str], inherited_domain: Any = None) -> str:
    detail = attrs.get(contract.RID_DETAIL)
    if detail.__class__ is str and _looks_like_json_list(detail):
        # The detail is JSON text already: splice it in rather than decoding and re-encoding a
        # list of dicts per batch record.
        out = _message_dict(name, default_type, attrs, inherited_domain, rejected,
                            _RID_PLACEHOLDER)
        return _encode(out).replace(_RID_PLACEHOLDER_JSON, detail, 1)
    return _encode(_message_dict(name, default_type, attrs, inherited_domain, rejected))


_RID_PLACEHOLDER = "\x00rid_detail\x00"
_RID_PLACEHOLDER_JSON = _encode(_RID_PLACEHOLDER)


def _looks_like_json_list(text: str) -> bool:
    # A shape check only: the handlers write the detail with json.dumps, and decoding it to
    # validate would double the cost of a batch record (docs/exporters.md).
    return text[:1] == "[" and text[-1:] == "]" and "\x00" not in text


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
