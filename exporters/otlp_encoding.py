"""OTLP trace requests encoded straight to protobuf bytes, for the SDK's OTLP exporters.

The SDK's OTLP exporters build one protobuf message object per span, attribute and array
element before serialising; for the tool's spans (arrays of 32 request ids, per-step batch
spans) that costs 50-120 µs per span, more than everything else the tool does. This module
writes the same ``ExportTraceServiceRequest`` bytes directly from the wire format of the OTLP
schema, caching the bytes of attribute keys and short string values (request ids and domains
repeat step after step).

The output is byte for byte what ``encode_spans(spans).SerializeToString()`` of the installed
SDK gives (checked by tests over many span shapes, and by :func:`install` once per process
before it switches an exporter over): resource then scope grouping in first-seen order, span
flags with the remote-parent bits, an empty ``status`` message on every span, ``None`` values
as empty ``AnyValue``, no link trace state, attributes whose value cannot be encoded left out.

:func:`install` makes the SDK's OTLP/HTTP and OTLP/gRPC trace exporters use it (set
``OTEL_VLLM_FAST_OTLP=0`` to keep the SDK's own encoder).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Mapping, Sequence
from typing import Any, Dict, List

_logger = logging.getLogger(__name__)

ENV = "OTEL_VLLM_FAST_OTLP"
_CACHE_LIMIT = 16384
_pack_double = struct.Struct("<d").pack
_pack_fixed64 = struct.Struct("<Q").pack
_pack_fixed32 = struct.Struct("<I").pack

_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
_FLAGS_HAS_IS_REMOTE = 0x100
_FLAGS_IS_REMOTE = 0x200
_KINDS: Dict[Any, bytes] = {}  # SpanKind -> the span's kind field


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_ONE_BYTE = [bytes((n,)) for n in range(128)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: its tag, the length, the payload."""
    size = len(payload)
    return _TAGS[number] + (_ONE_BYTE[size] if size < 128 else _varint(size)) + payload


# Tags of the length-delimited fields used below: (field number << 3) | 2.
_TAGS = {number: _varint((number << 3) | 2) for number in range(1, 17)}
_STRING_VALUE, _ARRAY_VALUE, _KVLIST_VALUE, _BYTES_VALUE = 1, 5, 6, 7

# Request ids, domains and attribute names repeat record after record: their encoded bytes
# are kept (bounded; cleared when full).
_element_cache: Dict[str, bytes] = {}  # string -> ArrayValue element (field 1, AnyValue)
_pair_cache: Dict[tuple, bytes] = {}  # (key, short string) -> KeyValue body
_key_cache: Dict[str, bytes] = {}  # key -> KeyValue key field


def _string(number: int, text: str) -> bytes:
    return _field(number, text.encode("utf-8")) if text else b""


def _string_value(text: str) -> bytes:
    return _field(_STRING_VALUE, text.encode("utf-8"))  # "" is still set: it is a oneof


def _remember(cache: Dict[Any, bytes], key: Any, value: bytes) -> bytes:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[key] = value
    return value


def _array(values: Any) -> bytes:
    cache = _element_cache
    parts = []
    for value in values:
        if value.__class__ is str:
            element = cache.get(value)
            if element is None:
                element = _field(1, _string_value(value))
                if len(value) <= 128:
                    _remember(cache, value, element)
        else:
            element = _field(1, _any_value(value))
        parts.append(element)
    return _field(_ARRAY_VALUE, b"".join(parts))


def _any_value(value: Any) -> bytes:
    """The bytes of an ``AnyValue`` message (without its own tag and length)."""
    kind = value.__class__
    if kind is str:
        return _string_value(value)
    if kind is tuple or kind is list:
        return _array(value)
    if value is None:
        return b""
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"
    if kind is int and _INT64_MIN <= value <= _INT64_MAX:
        return b"\x18" + _varint(value)
    if kind is float:
        return b"\x21" + _pack_double(value)
    return _other_value(value)


def _other_value(value: Any) -> bytes:
    # Subclasses and other containers, in the SDK encoder's order of checks.
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _string_value(str(value))
    if isinstance(value, int):
        number = int(value)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise ValueError(f"Value out of range: {number}")
        return b"\x18" + _varint(number)
    if isinstance(value, float):
        return b"\x21" + _pack_double(float(value))
    if isinstance(value, bytes):
        return _field(_BYTES_VALUE, bytes(value))
    if isinstance(value, Sequence):
        return _array(value)
    if isinstance(value, Mapping):
        return _field(_KVLIST_VALUE, b"".join(
            [_field(1, _key_value(str(k), v)) for k, v in value.items()]))
    raise TypeError(f"Invalid type {type(value)} of value {value}")


def _key_value(key: str, value: Any) -> bytes:
    """The body of a ``KeyValue`` message."""
    if value.__class__ is str and len(value) <= 128:
        pair = (key, value)
        cached = _pair_cache.get(pair)
        if cached is None:
            cached = _remember(_pair_cache, pair, _string(1, key) + _field(2, _string_value(value)))
        return cached
    key_bytes = _key_cache.get(key)
    if key_bytes is None:
        key_bytes = _remember(_key_cache, key, _string(1, key))
    return key_bytes + _field(2, _any_value(value))


def _attributes(number: int, attributes: Any) -> bytes:
    """Repeated ``KeyValue`` field ``number``; values that cannot be encoded are left out, as
    the SDK encoder does (it logs them)."""
    if not attributes:
        return b""
    parts = []
    for key, value in attributes.items():
        try:
            parts.append(_field(number, _key_value(key, value)))
        except Exception as error:  # the SDK logs and skips such a value too
            _logger.debug("OTLP: cannot encode attribute %s: %s", key, error)
    return b"".join(parts)


def _span(span: Any) -> bytes:
    context = span.get_span_context()
    parent = span.parent
    out = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"),
           b"\x12\x08", context.span_id.to_bytes(8, "big")]
    trace_state = context.trace_state
    if trace_state is not None:
        out.append(_string(3, ",".join([f"{k}={v}" for k, v in trace_state.items()])))
    if parent:
        out.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
    out.append(_string(5, span.name))
    kind = _KINDS.get(span.kind)
    if kind is None:
        kind = _KINDS[span.kind] = b"\x30" + _varint(span.kind.value + 1)  # OTLP counts from 1
    out.append(kind)
    if span.start_time:
        out.append(b"\x39" + _pack_fixed64(span.start_time))
    if span.end_time:
        out.append(b"\x41" + _pack_fixed64(span.end_time))
    out.append(_attributes(9, span.attributes))
    if span.dropped_attributes:
        out.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        body = [b"\x09" + _pack_fixed64(event.timestamp) if event.timestamp else b"",
                _string(2, event.name), _attributes(3, event.attributes)]
        if event.dropped_attributes:
            body.append(b"\x20" + _varint(event.dropped_attributes))
        out.append(_field(11, b"".join(body)))
    if span.dropped_events:
        out.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        linked = link.context
        body = [b"\x0a\x10", linked.trace_id.to_bytes(16, "big"),
                b"\x12\x08", linked.span_id.to_bytes(8, "big"),
                _attributes(4, link.attributes)]
        if link.dropped_attributes:
            body.append(b"\x28" + _varint(link.dropped_attributes))
        body.append(b"\x35" + _remote_flags(linked))
        out.append(_field(13, b"".join(body)))
    if span.dropped_links:
        out.append(b"\x70" + _varint(span.dropped_links))
    status = span.status
    if status is not None:  # the SDK sets it even when empty (UNSET, no description)
        body = _string(2, status.description or "")
        if status.status_code.value:
            body += b"\x18" + _varint(status.status_code.value)
        out.append(_field(15, body))
    out.append(b"\x85\x01" + _remote_flags(parent))
    return b"".join(out)


def _remote_flags(context: Any) -> bytes:
    """The fixed32 flags of a span (its parent's context) or a link: whether it is remote."""
    remote = context is not None and context.is_remote
    return _pack_fixed32(_FLAGS_HAS_IS_REMOTE | (_FLAGS_IS_REMOTE if remote else 0))


def _scope(scope: Any) -> bytes:
    if scope is None:
        return b""
    return (_string(1, scope.name) + _string(2, scope.version or "")
            + _attributes(3, scope.attributes))


def encode_request(spans: Sequence[Any]) -> bytes:
    """``ExportTraceServiceRequest`` bytes of ``spans``, as the SDK's encoder serialises them."""
    # Grouped by resource, then scope, in first-seen order, like the SDK's dicts; compared by
    # identity first (a Resource hashes by JSON-dumping its attributes, per span in the SDK).
    groups: List[list] = []  # [resource, [[scope, [encoded spans]], ...]]
    last_resource: Any = _NOTHING
    last_scope: Any = _NOTHING
    scopes: list = []
    encoded: List[bytes] = []
    for span in spans:
        resource = span.resource
        if resource is not last_resource:
            scopes = _group(groups, resource)
            last_resource, last_scope = resource, _NOTHING
        scope = span.instrumentation_scope or None
        if scope is not last_scope:
            encoded = _group(scopes, scope)
            last_scope = scope
        encoded.append(_field(2, _span(span)))
    request = []
    for resource, scopes in groups:
        body = [_field(1, _attributes(1, resource.attributes))]
        for scope, encoded in scopes:
            scope_spans = _field(1, _scope(scope)) + b"".join(encoded)
            if scope is not None:
                scope_spans += _string(3, scope.schema_url or "")
            body.append(_field(2, scope_spans))
        body.append(_string(3, resource.schema_url or ""))
        request.append(_field(1, b"".join(body)))
    return b"".join(request)


_NOTHING = object()


def _group(groups: List[list], key: Any) -> list:
    """The list kept for ``key`` in ``groups`` (pairs [key, list]), added when new."""
    for known, items in groups:
        if known is key or known == key:
            return items
    items: list = []
    groups.append([key, items])
    return items


# -- using it in the SDK's OTLP exporters ------------------------------------------------------

_GRPC_MODULE = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter"
_HTTP_MODULE = "opentelemetry.exporter.otlp.proto.http.trace_exporter"
_checked: Dict[str, bool] = {}


class _Encoded:
    """What the OTLP/HTTP exporter does with ``encode_spans(...)``: asks for its bytes. The
    protobuf message is parsed from them only if anything asks for more."""

    __slots__ = ("data", "parsed")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.parsed: Any = None

    def SerializePartialToString(self, **_: Any) -> bytes:  # noqa: N802 - protobuf's name
        return self.data

    SerializeToString = SerializePartialToString

    def __getattr__(self, name: str) -> Any:
        if self.parsed is None:
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
                ExportTraceServiceRequest,
            )

            self.parsed = ExportTraceServiceRequest.FromString(self.data)
        return getattr(self.parsed, name)


def _http_encode_spans(spans: Sequence[Any]) -> _Encoded:
    return _Encoded(encode_request(spans))


def _grpc_translate(spans: Sequence[Any]) -> Any:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    return ExportTraceServiceRequest.FromString(encode_request(spans))


def _probe_spans() -> List[Any]:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext, TraceFlags, TraceState
    from opentelemetry.trace.status import Status, StatusCode

    parent = SpanContext(0xA1, 0xB1, True, TraceFlags(1), TraceState([("k", "v")]))
    resource = Resource({"service.name": "probe", "n": 1})
    return [
        ReadableSpan("batch", SpanContext(0xA1, 0xC1, False, TraceFlags(1)), parent, resource,
                     {"ms.domain": "Schedule", "ms.rid": ("a", "b", ""), "size": 2, "ok": True,
                      "ratio": 0.5, "none": None, "raw": b"\x00"},
                     events=[Event("e", {"q": -1}, 5)], links=[Link(parent, {"l": "x"})],
                     status=Status(StatusCode.ERROR, "boom"), start_time=1, end_time=2,
                     instrumentation_scope=InstrumentationScope("probe", "1", "https://s")),
        ReadableSpan("root", SpanContext(0xA2, 0xC2, False), resource=Resource({}),
                     start_time=3, end_time=3),
    ]


def _matches_installed_sdk() -> bool:
    """Once per process: our bytes equal the installed SDK encoder's on a probe set."""
    if "sdk" not in _checked:
        try:
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

            probe = _probe_spans()
            _checked["sdk"] = encode_request(probe) == encode_spans(probe).SerializeToString()
        except Exception:
            _logger.debug("OTLP encoder self-check failed", exc_info=True)
            _checked["sdk"] = False
        if not _checked["sdk"]:
            _logger.info("otel-vllm-ascend: the installed OTLP encoder writes other bytes than "
                         "ours; OTLP export keeps the SDK's encoder")
    return _checked["sdk"]


def install(exporter: Any) -> bool:
    """Make the SDK's OTLP/HTTP or OTLP/gRPC trace exporter ``exporter`` encode with
    :func:`encode_request`; True when it now does. Other exporters (and subclasses defined
    elsewhere) are left alone, as is everything when ``OTEL_VLLM_FAST_OTLP=0`` or when the
    installed SDK encodes differently."""
    import sys

    module = type(exporter).__module__
    if module not in (_GRPC_MODULE, _HTTP_MODULE) or os.environ.get(ENV, "1") == "0":
        return False
    if not _matches_installed_sdk():
        return False
    if module == _GRPC_MODULE:
        if not callable(getattr(exporter, "_translate_data", None)):
            return False
        exporter._translate_data = _grpc_translate  # this exporter only
        return True
    # The HTTP exporter serialises through its module's encode_spans: every OTLP/HTTP trace
    # exporter of the process then gets the same bytes, faster.
    http = sys.modules[_HTTP_MODULE]
    current = getattr(http, "encode_spans", None)
    if current is not _http_encode_spans and getattr(current, "__module__", "").startswith(
            "opentelemetry.exporter.otlp.proto.common"):
        http.encode_spans = _http_encode_spans
    return http.encode_spans is _http_encode_spans
