"""Read OTLP JSON captures (``ExportTraceServiceRequest`` lines) into the builder.

Each span becomes the message the ``ms_service`` exporter would have written for it, through
the span contract's mapping (``contract_message``); span events become instant records.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Optional

from otel_vllm_ascend import contract
from otel_vllm_ascend.analysis.frame import ProcessInfo, RecordBuilder
from otel_vllm_ascend.analysis.read_results import ReadReport, _apply_meta, _process
from otel_vllm_ascend.contract_message import message_dict, record_header


def _otlp_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` in its JSON form -> a Python value (None when malformed)."""
    if not isinstance(value, dict):
        return value
    try:
        if "stringValue" in value:
            return value["stringValue"]
        if "intValue" in value:
            return int(value["intValue"])
        if "doubleValue" in value:
            return float(value["doubleValue"])
        if "boolValue" in value:
            return bool(value["boolValue"])
        if "arrayValue" in value:
            return [_otlp_value(v) for v in (value["arrayValue"] or {}).get("values", [])]
        if "kvlistValue" in value:
            return {kv.get("key"): _otlp_value(kv.get("value"))
                    for kv in (value["kvlistValue"] or {}).get("values", [])}
        if "bytesValue" in value:
            return value["bytesValue"]
    except (TypeError, ValueError, AttributeError):
        return None
    return None


def _otlp_attributes(items: Any) -> dict[str, Any]:
    if not isinstance(items, list):
        return {}
    return {kv["key"]: _otlp_value(kv.get("value")) for kv in items
            if isinstance(kv, dict) and "key" in kv}


def span_message(name: str, attributes: dict[str, Any], default_type: Optional[int],
                 inherited_domain: Optional[str] = None) -> tuple[dict, Optional[int]]:
    """Span-contract attributes -> the message dict the exporter would write, plus tid.

    ``default_type`` is 2 for a span, 0 for a span event; a span's ``ms.record`` kind overrides
    name and type as the exporter does. The mapping itself is ``contract_message``'s, shared
    with the exporter's rules (tests/unit/test_contract_message.py).
    """
    record = attributes.get(contract.RECORD)
    if record is not None:
        name, default_type = record_header(record, name)
    message = message_dict(name, default_type, attributes, inherited_domain)
    tid = attributes.get(contract.THREAD_ID)
    try:
        tid = int(tid) if tid is not None else None
    except (TypeError, ValueError):
        tid = None
    return message, tid


def _iter_otlp_requests(path: Path, report: ReadReport) -> Iterator[dict]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        text = handle.read()
    lines = [line for line in text.splitlines() if line.strip()]
    bad = 0
    parsed: list = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            bad += 1
    if bad and len(lines) > 1:
        try:  # one pretty-printed object rather than JSON lines
            parsed = [json.loads(text)]
            bad = 0
        except ValueError:
            pass
    if bad:
        report.unparsable += bad
        report.problems.append(f"{path}: {bad} line(s) are not JSON; those lines were skipped")
    for item in parsed:
        if isinstance(item, dict) and isinstance(item.get("resourceSpans", []), list):
            yield item


def _read_otlp(path: Path, builder: RecordBuilder, processes: dict, report: ReadReport) -> bool:
    source = path.stem
    try:
        requests = list(_iter_otlp_requests(path, report))
    except OSError as exc:
        report.problems.append(f"{path}: cannot read ({exc}); file skipped")
        return False
    mark_ids: dict[int, int] = {}
    bad = 0
    malformed = (KeyError, TypeError, ValueError, AttributeError)
    for request in requests:
        for resource_spans in _list(request.get("resourceSpans")):
            try:
                resource = _otlp_attributes(resource_spans["resource"].get("attributes")
                                            if isinstance(resource_spans.get("resource"), dict)
                                            else None)
                try:
                    pid = int(resource.get("process.pid") or 0)
                except (TypeError, ValueError):
                    pid = 0
                proc = _process(processes, str(resource.get("host.name") or ""), pid, source)
                role = resource.get(contract.PROCESS_ROLE)
                if role and role != "other" and not proc.role:
                    proc.role = str(role)
                scopes = _list(resource_spans.get("scopeSpans"))
            except malformed:
                bad += 1
                continue
            for scope_spans in scopes:
                spans = _list(scope_spans.get("spans")) if isinstance(scope_spans, dict) else None
                if spans is None:
                    bad += 1
                    continue
                for span in spans:
                    try:
                        _add_otlp_span(span, source, pid, proc, builder, mark_ids)
                    except malformed:
                        bad += 1
    if bad:
        report.unparsable += bad
        report.problems.append(f"{path}: {bad} malformed span(s) or resource(s) skipped")
    return True


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _add_otlp_span(span: dict, source: str, pid: int, proc: ProcessInfo,
                   builder: RecordBuilder, mark_ids: dict[int, int]) -> None:
    attributes = _otlp_attributes(span.get("attributes"))
    name = span["name"]
    start_ns = int(span["startTimeUnixNano"])
    end_ns = int(span.get("endTimeUnixNano") or start_ns)
    if attributes.get(contract.RECORD) == contract.RECORD_META:
        _apply_meta(proc, {key[len(contract.META_PREFIX):]: str(value)
                           for key, value in attributes.items()
                           if key.startswith(contract.META_PREFIX)})
        return
    message, tid = span_message(name, attributes, 2)
    domain = message.get("domain")
    tid = tid or 0
    for event in span.get("events") or []:
        event_attrs = _otlp_attributes(event.get("attributes"))
        event_message, event_tid = span_message(event["name"], event_attrs, 0, domain)
        ns = int(event["timeUnixNano"])
        ts = ns / 1000.0
        mark = mark_ids[pid] = mark_ids.get(pid, -1) + 1
        proc.records += builder.add(source, pid, event_tid or tid, mark, ts, ts, event_message,
                                    start_ns=ns)
    mark = mark_ids[pid] = mark_ids.get(pid, -1) + 1
    proc.records += builder.add(source, pid, tid, mark, start_ns / 1000.0, end_ns / 1000.0,
                                message, None, (end_ns - start_ns) / 1000.0, start_ns)
