"""The record sink: the one interface through which collection hands records to an exporter
without building OpenTelemetry spans.

Collection owns it, exporters implement it. An exporter that is also an SDK ``SpanExporter``
(our ``ms_service`` file exporter) and sits alone behind a batch or simple span processor gets
the sampled records of each recorder drain as :class:`records.SpanRow` values through
:meth:`RecordSink.write_rows` instead of spans: the same rows, without the span objects.
Collection never imports an exporter module; it recognises a sink by this class.
"""

from __future__ import annotations

import abc
from typing import Sequence

from otel_vllm_ascend.records import SpanRow


class RecordSink(abc.ABC):
    """Receives the sampled records of one drain, in order, on the recorder's thread."""

    @abc.abstractmethod
    def write_rows(self, rows: Sequence[SpanRow]) -> None:
        """Write ``rows``; must not raise (count and report a failure instead) and must give
        the same output as exporting the spans those records would have become."""
