"""Span processors the distro installs next to the exporters.

* :class:`ThreadIdSpanProcessor` (defined on the collection side, ``otel_vllm_ascend.thread_id``)
  stamps ``thread.id`` (the OS thread id) on spans that start without one.
* :class:`CountingBatchSpanProcessor` is the SDK's ``BatchSpanProcessor`` that also counts the
  spans it drops because its queue (``OTEL_BSP_MAX_QUEUE_SIZE``) is full (in
  :mod:`otel_vllm_ascend.drops`, the process's one drop count, and in :attr:`dropped_spans`),
  and says once how to size the queue. Around the SDK's OTLP exporters it switches them to the
  direct OTLP encoder (``otlp_encoding.py``: the same bytes at a fraction of the CPU).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from otel_vllm_ascend import drops
from otel_vllm_ascend.exporters import otlp_encoding
from otel_vllm_ascend.thread_id import ThreadIdSpanProcessor

__all__ = ["CountingBatchSpanProcessor", "ThreadIdSpanProcessor"]

_logger = logging.getLogger(__name__)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """``BatchSpanProcessor`` with a count of queue-overflow drops in :attr:`dropped_spans`."""

    def __init__(self, span_exporter: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(span_exporter, *args, **kwargs)
        otlp_encoding.install(span_exporter)  # the SDK's OTLP exporters: same bytes, faster
        self.dropped_spans = 0
        self._queue_limit: Optional[int] = getattr(self._pending(), "maxlen", None)

    def _pending(self) -> Any:
        # The SDK keeps its bounded deque private; without it we cannot count, only forward.
        return getattr(getattr(self, "_batch_processor", None), "_queue", None)

    def on_end(self, span: ReadableSpan) -> None:
        limit = self._queue_limit
        if limit is not None and span.context is not None and span.context.trace_flags.sampled:
            queue = self._pending()
            if queue is not None and len(queue) >= limit:
                self.dropped_spans += 1
                drops.add(drops.SPAN_QUEUE)
                if self.dropped_spans == 1:
                    _logger.error(
                        "span queue full (%d spans): the oldest spans are being dropped before "
                        "export by %s. Raise OTEL_BSP_MAX_QUEUE_SIZE (see docs/exporters.md); "
                        "the count is reported at exit.",
                        limit, type(self.span_exporter).__name__,
                    )
        super().on_end(span)

    def shutdown(self) -> None:
        super().shutdown()
        drops.report()  # the process's drops, this queue's among them, said once
