"""Attribute names of the span contract (docs/span-contract.md): collect, export, analyse."""

DOMAIN = "ms.domain"
RID = "ms.rid"
RID_DETAIL = "ms.rid_detail"
METRIC_PREFIX = "ms.metric."
METRIC_INC_PREFIX = "ms.metric_inc."
SCOPE_PREFIX = "ms.scope."
RECORD = "ms.record"
TYPE = "ms.type"
LINK_FROM = "ms.link.from"
LINK_TO = "ms.link.to"
META_PREFIX = "ms.meta."
THREAD_ID = "thread.id"

# Values of RECORD for zero-duration records.
RECORD_EVENT = "event"
RECORD_LINK = "link"
RECORD_METRIC = "metric"
RECORD_META = "meta"

LINK_NAME = "link"
META_NAME = "Meta"

# Attributes in these namespaces are for OTLP viewers only: never written into a message.
OTEL_ONLY_PREFIXES = ("gen_ai.", "thread.", "code.", "vllm.", "otel.", "exception.")

# Resource attribute naming the vLLM process kind.
PROCESS_ROLE = "vllm.process.role"
