"""What crosses from vLLM's threads to the recorder's thread, and from there to a record sink.

Named tuples, not positional ones: a reader (or a tool) can follow a field from the handler
that fills it to the exporter that writes it, and building one costs about what a plain tuple
does (``tuple.__new__`` below skips the keyword handling of the generated constructor).
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence, Tuple

from opentelemetry.trace import SpanContext

EventTuple = Tuple[str, int, Mapping[str, Any]]  # (name, timestamp_ns, attributes)


class SpanRecord(NamedTuple):
    """One span as a handler captured it (queued by :func:`recorder.record_span`).

    ``attributes`` values and ``links`` may be :class:`recorder.Deferred` (computed on the
    recorder's thread).
    """

    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]
    events: Optional[Sequence[EventTuple]]
    parent: Optional[SpanContext]
    links: Any  # Optional[Sequence[SpanContext]] or a Deferred giving one
    exception: Any  # Optional[BaseException], or a CapturedException from another process
    thread_id: int
    span_context: Optional[SpanContext]  # the span's own ids, chosen in advance (roots only)


# A task, ``func(arg)`` to run on the recorder's thread in order with the span records, is a
# plain pair ``(func, arg)`` (:func:`recorder.record_task`), not a named tuple: hooks queue one
# per engine-step span, and where they run (once per step, every cache cold) making a named
# tuple costs about as much as the rest of queueing it (docs/benchmarks.md, issue 17, tenth
# part). A record whose class is ``tuple`` is a task.


class SpanRow(NamedTuple):
    """A sampled span as a :class:`record_sink.RecordSink` receives it: what its SDK span would
    carry for a file writer, without building the span (no ids, resource or scope)."""

    name: str
    start_ns: int
    end_ns: int
    attributes: Mapping[str, Any]  # plain values, lists as tuples (as the SDK stores them)
    events: Sequence[EventTuple]
    thread_id: int


class CapturedException(NamedTuple):
    """An exception as text, for a record built in another process (``handoff.py``): what the
    SDK's ``record_exception`` and the span status would take from the exception itself."""

    type: str  # module-qualified, as the ``exception.type`` event attribute
    name: str  # the class name, as the span status says it
    message: str
    stacktrace: str


new_span_record = tuple.__new__  # new_span_record(SpanRecord, (fields...)): the fast way
