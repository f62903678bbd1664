"""msserviceprofiler's fluent ``Profiler`` API, recording OpenTelemetry spans.

Handlers written for msserviceprofiler build records with a chain of calls::

    from otel_vllm_ascend.compat import Level, Profiler

    Profiler(Level.INFO).domain("Schedule").res(request_id).metric("QueueSize", 3) \\
        .metric_scope("QueueName", "WAITING").event("Enqueue")

    with Profiler(Level.INFO).domain("Execute").res(rids).span_start("modelExec") as prof:
        result = original(*args, **kwargs)
        prof.attr("batch_size", n)

The same chain works here, with the same record semantics (docs/span-contract.md maps each
reference message key onto a span attribute; the ms_service exporter writes the keys back):

==================================  =============================================================
call                                recorded as
==================================  =============================================================
``Profiler(level)``                 collected only while the live config enables ``level``
``.domain(d)``                      ``ms.domain``; also off when ``d`` is not in the config's list
``.res(r)``                         ``ms.rid`` (a list of dicts also goes to ``ms.rid_detail``)
``.attr(k, v)``                     attribute ``k`` (dicts and mixed lists as JSON text)
``.metric(n, v)``                   ``ms.metric.<n>`` (message key ``<n>=``)
``.metric_inc(n, v)``               ``ms.metric_inc.<n>`` (``<n>+``)
``.metric_scope(n, v=0)``           ``ms.scope.<n>`` (``scope#<n>``)
``.metric_scope_as_req_id()``       ``ms.scope.`` = ``"req"`` (``scope#``)
``.event(name)``                    a span event on the innermost open fluent span of this
                                    thread or asyncio task, else a zero-duration span
                                    (``ms.record = "event"``)
``.span_start(name)``/``span_end``  one span from start to end; also as a context manager
``.link(from_rid, to_rid)``         a ``link`` record (``ms.link.from`` / ``ms.link.to``)
``.launch()``                       a metric sample (``ms.record = "metric"``, no ``type``)
``.add_meta_info(k, v)``            a ``Meta`` row ``k`` = ``str(v)``
==================================  =============================================================

Nothing here touches OpenTelemetry on the calling thread: records go through
:mod:`otel_vllm_ascend.recorder`. A disabled ``Profiler`` costs one flag check per call. Values
that are ``None`` are left out (OpenTelemetry attributes cannot hold them).
"""

from __future__ import annotations

import contextvars
import enum
import json
import threading
import time
import weakref
from typing import Any, Dict, Optional, Union

from otel_vllm_ascend import config, contract, recorder
from otel_vllm_ascend.compat import gate

__all__ = ["Level", "MarkType", "Profiler", "message_to_attributes", "parse_level"]


class Level(enum.IntEnum):
    """Record levels; a record is kept when the configured ``profiler_level`` is >= its level."""

    ERROR = 10
    INFO = 20
    DETAILED = 30
    VERBOSE = 40
    # Aliases the reference also accepts (same values, so ``Level.L1 is Level.INFO``).
    L0 = 10
    L1 = 20
    L2 = 30
    LEVEL_CORE_TRACE = 10
    LEVEL_OUTLIER_ENENT = 10  # sic: the reference's spelling, kept so ported code imports
    LEVEL_NORMAL_TRACE = 20
    LEVEL_DETAILED_TRACE = 30


class MarkType(enum.IntEnum):
    """Values of the message key ``type``."""

    TYPE_EVENT = 0
    TYPE_METRIC = 1
    TYPE_SPAN = 2
    TYPE_LINK = 3


LevelLike = Union[Level, int, str]


def parse_level(level: LevelLike) -> int:
    """A level as an int; accepts ``Level``, ints, digit strings and names (any case).

    The names are the config file's (``otel_vllm_ascend.config.LEVELS``). The reference's
    packaged default timer passes the string ``"INFO"``, which its C binding rejects; we accept
    it. A bad value raises ``ValueError`` naming it.
    """
    try:
        return config.parse_level(level)
    except config.ConfigError as exc:
        raise ValueError(f"profiler level {level!r}: {exc}") from None


# Message keys the record kind decides; user values for them are not copied as attributes.
_NAME_KEY = "name"
_TYPE_KEY = "type"
_SCALARS = (str, bool, int, float)


def _attribute_value(value: Any) -> Any:
    """An OpenTelemetry-valid attribute value for a JSON-serialisable message value."""
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        kinds = {type(item) for item in value}
        if len(kinds) <= 1 and kinds <= set(_SCALARS):
            return list(value)
    # Dicts, nested or mixed lists: keep the content as the JSON text the reference would write.
    return json.dumps(value, default=str)


def _rid_attributes(rid: Any, attributes: Dict[str, Any]) -> None:
    if isinstance(rid, (list, tuple)):
        if any(isinstance(item, dict) for item in rid):
            attributes[contract.RID_DETAIL] = json.dumps(list(rid), default=str)
            attributes[contract.RID] = [
                str(item["rid"]) for item in rid if isinstance(item, dict) and "rid" in item
            ]
        else:
            attributes[contract.RID] = [str(item) for item in rid]
    else:
        attributes[contract.RID] = str(rid)


def message_to_attributes(message: Dict[str, Any]) -> Dict[str, Any]:
    """Span-contract attributes for a reference message dict (keys in insertion order).

    ``name`` is the record name and not an attribute; an explicit ``type`` becomes ``ms.type``.
    """
    attributes: Dict[str, Any] = {}
    for key, value in message.items():
        if value is None or key == _NAME_KEY:
            continue
        if key == "domain":
            attributes[contract.DOMAIN] = str(value)
        elif key == "rid":
            _rid_attributes(value, attributes)
        elif key == _TYPE_KEY:
            attributes[contract.TYPE] = int(value)
        elif key.startswith("scope#"):
            attributes[contract.SCOPE_PREFIX + key[len("scope#"):]] = _attribute_value(value)
        elif key.endswith("=") and len(key) > 1:
            attributes[contract.METRIC_PREFIX + key[:-1]] = _attribute_value(value)
        elif key.endswith("+") and len(key) > 1:
            attributes[contract.METRIC_INC_PREFIX + key[:-1]] = _attribute_value(value)
        else:
            attributes[key] = _attribute_value(value)
    return attributes


class _OpenSpans:
    """Fluent spans open in the current context (thread or asyncio task), innermost last.

    A context variable, so concurrent requests on one event loop do not see each other's spans;
    weak references, so a span whose ``span_end()`` never comes is garbage collected (and hands
    its events back) instead of collecting every later event.
    """

    def __init__(self) -> None:
        self._var: contextvars.ContextVar = contextvars.ContextVar(
            "otel_vllm_compat_open_spans", default=())

    def push(self, prof: Profiler) -> None:
        self._var.set((*self._var.get(), weakref.ref(prof)))

    def innermost(self) -> Optional[Profiler]:
        stack = self._var.get()
        for ref in reversed(stack):
            prof = ref()
            if prof is not None and prof._start_ns is not None:
                return prof
        return None

    def remove(self, prof: Profiler) -> None:
        stack = self._var.get()
        if stack:
            self._var.set(tuple(ref for ref in stack if ref() not in (None, prof)))


_open_spans = _OpenSpans()


class Profiler:
    """One record under construction; see the module documentation."""

    __slots__ = ("_level", "_enabled", "_message", "_name", "_start_ns", "_tid", "_events",
                 "__weakref__")

    def __init__(self, profiler_level: LevelLike = Level.INFO) -> None:
        self._level = parse_level(profiler_level)
        self._enabled = gate.enabled(self._level)
        self._message: Dict[str, Any] = {}
        self._name: Optional[str] = None
        self._start_ns: Optional[int] = None
        self._tid = 0
        self._events: Optional[list] = None

    @property
    def enable(self) -> bool:
        """True when this record will be collected."""
        return self._enabled

    # --- building the message -----------------------------------------------------------------

    def attr(self, key: str, value: Any) -> Profiler:
        if self._enabled:
            self._message[key] = value
        return self

    def domain(self, domain: str) -> Profiler:
        if self._enabled:
            self._enabled = gate.enabled(self._level, domain)
            self._message["domain"] = domain
        return self

    def res(self, rid: Any) -> Profiler:
        return self.attr("rid", rid)

    def metric(self, metric_name: str, metric_value: Any) -> Profiler:
        return self.attr(f"{metric_name}=", metric_value)

    def metric_inc(self, metric_name: str, metric_value: Any) -> Profiler:
        return self.attr(f"{metric_name}+", metric_value)

    def metric_scope(self, scope_name: str, scope_value: Any = 0) -> Profiler:
        return self.attr(f"scope#{scope_name}", scope_value)

    def metric_scope_as_req_id(self) -> Profiler:
        return self.attr("scope#", "req")

    # --- writing records ----------------------------------------------------------------------

    def event(self, event_name: str) -> None:
        """Record an event now: on the open fluent span of this context, else on its own."""
        if not self._enabled:
            return
        now = time.time_ns()
        attributes = message_to_attributes(self._message)
        attributes.pop(contract.TYPE, None)  # event() sets type 0, as in the reference
        holder = _open_spans.innermost()
        if holder is not None and holder is not self:
            holder._add_event(event_name, now, attributes)
        else:
            recorder.record_event(event_name, attributes, timestamp_ns=now)

    def span_start(self, span_name: str) -> Profiler:
        """Open a span; attributes may still be added until :meth:`span_end`."""
        if not self._enabled:
            return self
        self._name = span_name
        self._tid = threading.get_native_id()
        self._start_ns = time.time_ns()
        _open_spans.push(self)
        return self

    def span_end(self) -> None:
        """Close the span opened by :meth:`span_start`; a second call does nothing."""
        start_ns = self._start_ns
        if not self._enabled or start_ns is None:
            return
        end_ns = time.time_ns()
        self._start_ns = None
        _open_spans.remove(self)
        attributes = message_to_attributes(self._message)
        if attributes.get(contract.TYPE) == MarkType.TYPE_SPAN:
            del attributes[contract.TYPE]
        events, self._events = self._events, None
        recorder.record_span(self._name or "", start_ns, end_ns, attributes, events=events,
                             thread_id=self._tid)

    def link(self, from_rid: Any, to_rid: Any) -> None:
        """Record that request id ``from_rid`` (API server) is ``to_rid`` (EngineCore)."""
        if not self._enabled:
            return
        attributes = message_to_attributes(self._message)
        attributes.pop(contract.TYPE, None)
        attributes.setdefault(contract.DOMAIN, "Engine")
        attributes[contract.LINK_FROM] = str(from_rid)
        attributes[contract.LINK_TO] = str(to_rid)
        recorder.record_event(contract.LINK_NAME, attributes, record=contract.RECORD_LINK)

    def launch(self) -> None:
        """Record the message as a metric sample (no ``name``, no ``type``)."""
        if not self._enabled:
            return
        recorder.record_event(contract.RECORD_METRIC, message_to_attributes(self._message),
                              record=contract.RECORD_METRIC)

    def add_meta_info(self, meta_key: str, meta_data: Any) -> None:
        """Add a ``Meta`` row (process metadata, e.g. ``dpRankId``)."""
        if self._enabled:
            recorder.record_meta(meta_key, meta_data)

    # --- context manager: ``with Profiler(...).span_start(name) as prof:`` ---------------------

    def __enter__(self) -> Profiler:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.span_end()

    # --- internals ----------------------------------------------------------------------------

    def _add_event(self, name: str, timestamp_ns: int, attributes: Dict[str, Any]) -> None:
        if self._events is None:
            self._events = []
        self._events.append((name, timestamp_ns, attributes))

    def __del__(self) -> None:
        # A span never ended leaves no span (as in the reference), but the events recorded
        # inside it still happened: write them on their own.
        events = getattr(self, "_events", None)
        if events and getattr(self, "_start_ns", None) is not None:
            try:
                for name, timestamp_ns, attributes in events:
                    recorder.record_event(name, attributes, timestamp_ns=timestamp_ns)
            except Exception:  # e.g. at interpreter exit; a finaliser must not raise
                pass
