"""The hand-off from a serving process to the node's writer process: records as plain values.

A serving process (API server, EngineCore, Worker) only captures: its handlers queue
:class:`records.SpanRecord` values (``recorder.py``), and every 0.2 s the recorder's thread
turns the queued records into plain tuples (:func:`to_wire`), packs one drain into one frame
with :mod:`marshal` (C code, no object graph walk in Python) and writes it to the writer's
socket (``writer_client.py``). The writer process (``otel_vllm_ascend.exporters.writer``)
unpacks the frame, turns each tuple back into a :class:`records.SpanRecord`
(:func:`from_wire`) and builds the spans there, with a tracer provider that carries the
recording process's resource.

Frame (one per drain, on a stream socket)::

    u32 little-endian  length of what follows
    u8                 kind: HELLO, RECORDS or BYE
    bytes              marshal (version 4) of the payload

An object shared by records of one drain crosses once: marshal (version 4) writes a reference
for an object it has already written, so the step's request-id list, held as the same list by
``batchFrameworkProcessing`` and ``modelExec`` (EngineCore) or ``modelRunnerExec`` and
``forward`` (Worker), is sent once per frame and decoded as one list. :class:`Repeated` extends
that across steps: EngineCore's running request ids and the API server's ``detokenize`` ids,
when equal to the previous step's, are swapped for the list already sent.

HELLO carries a dict (``pid``, ``resource`` attributes, ``schema_url``, ``folder``, ``format``),
RECORDS a list of wire records and tasks, BYE nothing (the producer is done; EOF says the same).

A wire record is a 12-tuple of plain values (str, int, float, bool, None, lists, tuples, dicts
of those)::

    (name, start_ns, end_ns, attributes, computed, events, parent, links, links_computed,
     exception, thread_id, own_context)

* ``attributes``: the record's plain attributes; ``computed``: None or a list of
  ``(key, function name, plain argument)`` for attribute values the writer computes
  (a :class:`recorder.Deferred` whose function was registered with :func:`register_value`);
* ``parent``, ``own_context`` and each link: ``(trace_id, span_id, is_remote, flags,
  tracestate header or None)``; ``links_computed``: None or ``(function name, argument)``;
* ``exception``: None or ``(type, short type name, message, stack trace)`` as text
  (:class:`records.CapturedException`).

A wire task is a 3-tuple ``("", function name, plain argument)``: an expander
(:func:`register_expander`) the writer runs in order with the records of that process, giving
span records: one engine step's span, classification included, or a Worker phase, each
captured as one small plain value. A deferred value or task
whose function was not registered, or whose argument cannot be made plain, is computed in the
serving process before the hand-off (correct, only not cheaper).
"""

from __future__ import annotations

import marshal
import struct
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

from opentelemetry.trace import SpanContext, TraceFlags, TraceState

from otel_vllm_ascend.records import CapturedException, SpanRecord

FORMAT = 1
MARSHAL_VERSION = 4
HELLO, RECORDS, BYE = 1, 2, 3
HEADER = struct.Struct("<IB")
MAX_FRAME = 256 * 1024 * 1024  # a reader refuses anything larger (a corrupt length)

ContextWire = Tuple[int, int, bool, int, Optional[str]]


class HandoffError(Exception):
    """A frame or record that cannot be decoded (a broken or foreign peer)."""


# -- the registry: functions whose work moves to the writer --------------------------------------

class _WireFunction:
    __slots__ = ("name", "to_wire", "remote")

    def __init__(self, name: str, to_wire: Optional[Callable[[Any], Any]],
                 remote: Callable[[Dict[str, Any], Any], Any]) -> None:
        self.name = name
        self.to_wire = to_wire  # serving side: argument -> plain value (None: as it is)
        self.remote = remote  # writer side: (producer state, plain value) -> result


wire_functions: Dict[Any, _WireFunction] = {}  # by the function a task queues
_by_name: Dict[str, _WireFunction] = {}
# What the writer keeps per producer process, kept here for the expanders run in this process
# (without a writer): e.g. the engine steps classified so far.
local_state: Dict[str, Any] = {}


def register_value(func: Callable[[Any], Any], name: str,
                   to_wire: Optional[Callable[[Any], Any]] = None,
                   remote: Optional[Callable[[Dict[str, Any], Any], Any]] = None) -> None:
    """Let the writer compute ``Deferred(func, arg)``: it calls ``remote(state, to_wire(arg))``
    (default: ``func`` of the plain argument). ``state`` is a dict kept per producer process."""
    entry = _WireFunction(name, to_wire, remote or (lambda state, arg: func(arg)))
    wire_functions[func] = entry
    _by_name[name] = entry


def register_expander(name: str, to_wire: Optional[Callable[[Any], Any]],
                      expand: Callable[[Dict[str, Any], Any], Any]) -> Callable[[Any], Any]:
    """A record kind captured as one value and expanded into span records by
    ``expand(state, plain value)`` (a list of :class:`records.SpanRecord`, or None): in the
    writer, or, without one, on the recorder's thread with this process's own state. Both run
    the same code on the same plain value, so both give the same spans.

    Returns the function to queue: ``recorder.record_task(returned, arg)``; ``to_wire(arg)``
    makes the plain value (None: ``arg`` is plain already) on the recorder's thread.
    """
    def expand_here(arg: Any) -> Any:
        return expand(local_state, arg if to_wire is None else to_wire(arg))

    expand_here.__qualname__ = expand_here.__name__ = name
    register_value(expand_here, name, to_wire, expand)  # the writer runs the same task
    return expand_here


def remote_function(name: str) -> Callable[[Dict[str, Any], Any], Any]:
    entry = _by_name.get(name)
    if entry is None:
        raise HandoffError(f"unknown hand-off function {name!r}")
    return entry.remote


class Repeated:
    """The value sent last of one kind (a step's request ids, say) in place of an equal new one.

    marshal writes an object it has already written in the same frame as a 5-byte reference,
    so a batch that did not change between engine steps crosses once per frame instead of
    once per step (in C, the comparison is an identity check per item). Only ever swaps equal
    values, so the writer decodes what it would have decoded anyway; the swapped-in object
    is shared by the records that carry it, which only read it.
    """

    __slots__ = ("last",)

    def __init__(self) -> None:
        self.last: Any = None

    def __call__(self, value: Any) -> Any:
        last = self.last
        if value.__class__ is last.__class__ and value == last:
            return last
        self.last = value
        return value


# -- span contexts ----------------------------------------------------------------------------

def context_to_wire(context: Optional[SpanContext]) -> Optional[ContextWire]:
    if context is None:
        return None
    state = context.trace_state
    return (context.trace_id, context.span_id, context.is_remote, int(context.trace_flags),
            state.to_header() if state else None)


def context_from_wire(wire: Optional[ContextWire]) -> Optional[SpanContext]:
    if wire is None:
        return None
    trace_id, span_id, is_remote, flags, state = wire
    return SpanContext(trace_id, span_id, is_remote, TraceFlags(flags),
                       TraceState.from_header([state]) if state else None)


def capture_exception(exc: BaseException) -> CapturedException:
    """The text the SDK's ``record_exception`` and the span status would take from ``exc``."""
    kind = type(exc)
    module = kind.__module__
    qualified = f"{module}.{kind.__qualname__}" if module and module != "builtins" \
        else kind.__qualname__
    stack = "".join(traceback.format_exception(kind, exc, exc.__traceback__))
    return CapturedException(qualified, kind.__name__, str(exc), stack)


# -- records ----------------------------------------------------------------------------------

_PLAIN = (str, int, float, bool, type(None))
_PLAIN_TYPES = frozenset(_PLAIN)


def _plain(value: Any) -> Any:
    """``value`` when marshal takes it as the SDK would store it; lists and tuples of plain
    items as they are; anything else (an object the SDK would reject) as None, dropped later."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is list or kind is tuple:
        if _PLAIN_TYPES.issuperset(map(type, value)):  # the check runs in C
            return value if kind is list else list(value)
        return [item if type(item) in _PLAIN else str(item) for item in value]
    for base in (bool, int, float, str):  # a subclass (an IntEnum, a str subclass)
        if isinstance(value, base):
            return base(value)
    return _UNSET


class _Unset:
    pass


_UNSET = _Unset()


def _deferred_to_wire(value: Any) -> Optional[tuple]:
    """``(name, plain argument)`` for a registered deferred value, else None."""
    entry = wire_functions.get(value.func)
    if entry is None:
        return None
    arg = value.arg if entry.to_wire is None else entry.to_wire(value.arg)
    return entry.name, arg


_AS_IS = (str, int, float, bool, type(None), list, tuple)  # marshal checks list items
_AS_IS_TYPES = frozenset(_AS_IS)


def _sanitized_attributes(attributes: Any) -> dict:
    out = {}
    for key, value in attributes.items():
        value = _plain(value)
        if value is not _UNSET:
            out[key] = value
    return out


def to_wire(rec: Any, deferred_type: type) -> Optional[tuple]:
    """A queued record or task as plain values (work left to the writer where registered).

    Returns None for a task that ran here instead (its function was not registered).
    Attribute and event dicts whose values are all of plain types go as they are (no copy);
    :func:`records_frame` cleans a record that marshal still refuses (a foreign list item).
    """
    if rec.__class__ is tuple:  # a task: (func, arg)
        func, arg = rec
        entry = wire_functions.get(func)
        if entry is None:
            func(arg)
            return None
        return ("", entry.name, entry.to_wire(arg) if entry.to_wire else arg)
    name, start, end, attributes, events, parent, links, exception, tid, own = rec
    attrs = attributes
    computed = None
    if not _AS_IS_TYPES.issuperset(map(type, attributes.values())):  # the check runs in C
        attrs = {}
        for key, value in attributes.items():
            kind = type(value)
            if kind in _AS_IS:
                attrs[key] = value
                continue
            if kind is deferred_type:
                wire = _deferred_to_wire(value)
                if wire is not None:
                    if computed is None:
                        computed = []
                    computed.append((key, wire[0], wire[1]))
                    continue
                value = value.func(value.arg)
            value = _plain(value)
            if value is not _UNSET:
                attrs[key] = value
    if events:
        for _, _, event_attrs in events:
            if not _AS_IS_TYPES.issuperset(map(type, event_attrs.values())):
                events = [(event_name, ts, _sanitized_attributes(event_attrs))
                          for event_name, ts, event_attrs in events]
                break
    links_computed = None
    if links is not None:
        if type(links) is deferred_type:
            links_computed = _deferred_to_wire(links)
            links = None if links_computed is not None else links.func(links.arg)
        if links is not None:
            links = [context_to_wire(link) for link in links]
    if exception is not None:
        exception = tuple(capture_exception(exception))
    return (name, start, end, attrs, computed, events or None,
            context_to_wire(parent) if parent is not None else None, links or None,
            links_computed, exception, tid, context_to_wire(own) if own is not None else None)


def _cleaned(wire: tuple) -> tuple:
    """A wire record whose attribute and event values are made plain item by item."""
    if len(wire) == 3:
        return wire
    events = wire[5]
    if events:
        events = [(event_name, ts, _sanitized_attributes(event_attrs))
                  for event_name, ts, event_attrs in events]
    return wire[:3] + (_sanitized_attributes(wire[3]), wire[4], events) + wire[6:]


def from_wire(wire: tuple, state: Dict[str, Any]) -> List[SpanRecord]:
    """The record again (computed values computed now); a task runs now and gives the span
    records it expands into (none for a plain task)."""
    if len(wire) == 3:
        _, name, arg = wire
        return remote_function(name)(state, arg) or []
    (name, start, end, attrs, computed, events, parent, links, links_computed, exception, tid,
     own) = wire
    if computed:
        for key, function, arg in computed:
            attrs[key] = remote_function(function)(state, arg)
    if links_computed is not None:
        links = remote_function(links_computed[0])(state, links_computed[1])
    elif links:
        links = [context_from_wire(link) for link in links]
    return [tuple.__new__(SpanRecord, (
        name, start, end, attrs, events, context_from_wire(parent), links,
        CapturedException(*exception) if exception is not None else None, tid,
        context_from_wire(own)))]


# -- frames -----------------------------------------------------------------------------------

def frame(kind: int, payload: Any) -> bytes:
    body = marshal.dumps(payload, MARSHAL_VERSION)
    return HEADER.pack(len(body) + 1, kind) + body


def records_frame(wires: List[tuple]) -> bytes:
    """One RECORDS frame. A record marshal refuses (a foreign item inside a list or tuple, or
    in a computed value's argument) is cleaned item by item; one that still fails is left out
    rather than losing the whole drain."""
    try:
        return frame(RECORDS, wires)
    except ValueError:
        kept = []
        for wire in wires:
            for candidate in (wire, _cleaned(wire)):
                try:
                    marshal.dumps(candidate, MARSHAL_VERSION)
                except ValueError:
                    continue
                kept.append(candidate)
                break
        return frame(RECORDS, kept)


class FrameReader:
    """Splits a byte stream into ``(kind, payload)`` frames."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> List[Tuple[int, Any]]:
        buffer = self.buffer
        buffer += data
        frames = []
        offset = 0
        size = len(buffer)
        while size - offset >= HEADER.size:
            length, kind = HEADER.unpack_from(buffer, offset)
            if length < 1 or length > MAX_FRAME:
                raise HandoffError(f"bad frame length {length}")
            end = offset + 4 + length
            if end > size:
                break
            try:
                payload = marshal.loads(bytes(buffer[offset + HEADER.size:end]))
            except (ValueError, EOFError, TypeError) as exc:
                raise HandoffError(f"undecodable frame: {exc}") from None
            frames.append((kind, payload))
            offset = end
        if offset:
            del buffer[:offset]
        return frames
