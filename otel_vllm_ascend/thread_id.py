"""``thread.id`` on spans that start without one (spans not built from a record).

:class:`ThreadIdSpanProcessor` stamps the OS thread id at span start, so the ``Mstx.tid`` column
names the recording thread, not the exporter's. Records carry it already, which is why the
direct span builder may skip this processor; it lives on the collection side for that reason.
"""

from __future__ import annotations

import threading
from typing import Optional

from opentelemetry.context import Context
from opentelemetry.sdk.trace import Span, SpanProcessor

from otel_vllm_ascend import contract


class ThreadIdSpanProcessor(SpanProcessor):
    """Adds ``thread.id`` at span start when the span does not carry one already."""

    def on_start(self, span: Span, parent_context: Optional[Context] = None) -> None:
        attrs = span.attributes
        if attrs is None or contract.THREAD_ID not in attrs:
            span.set_attribute(contract.THREAD_ID, threading.get_native_id())
