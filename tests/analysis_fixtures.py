"""Real capture files for analyzer tests.

:class:`Capture` collects records per process and writes them as msserviceprofiler SQLite files
(``Mstx`` + ``Meta``) in any of the three layouts, with JSON or caret-form messages.
:func:`simulate_service` produces a consistent vLLM V1 run (API server + EngineCore) whose true
per-request timings are returned alongside, so tests can compare the analyzer with the truth.
"""

from __future__ import annotations

import json
import math
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

MSTX_DDL = ("CREATE TABLE Mstx (message TEXT, flag INTEGER, markId INTEGER, timestamp INTEGER,"
            " endTimestamp INTEGER, pid INTEGER, tid INTEGER)")


def caret_message(message: dict) -> str:
    """The C++ API's encoding: ``^key^:^text^,`` per item, numbers bare, trailing comma."""
    parts = []
    for key, value in message.items():
        if isinstance(value, str):
            text = f"^{value}^"
        elif value is None:
            text = "null"
        elif isinstance(value, bool):
            text = "1" if value else "0"
        elif isinstance(value, float):
            text = f"{value:f}"
        elif isinstance(value, (list, dict)):
            text = json.dumps(value, separators=(",", ":")).replace('"', "^")
        else:
            text = str(value)
        parts.append(f"^{key}^:{text},")
    return "".join(parts)


def _ns(us: float) -> int:
    """µs -> integer ns without going through a float above 2**53."""
    whole = math.floor(us)
    return int(whole) * 1000 + int(round((us - whole) * 1000))


@dataclass
class Record:
    message: dict
    flag: int
    start_ns: int
    end_ns: int
    tid: int


@dataclass
class Process:
    host: str
    pid: int
    role: str = ""
    meta: dict = field(default_factory=dict)
    records: list = field(default_factory=list)
    main_tid: int = 0

    def __post_init__(self) -> None:
        self.main_tid = self.main_tid or self.pid

    def event(self, name: str, ts_us: float, domain: str = "Engine", rid: Any = None,
              tid: Optional[int] = None, **keys: Any) -> None:
        message: dict = {"domain": domain}
        if rid is not None:
            message["rid"] = rid
        message.update(keys)
        message["type"] = 0
        message["name"] = name
        ns = _ns(ts_us)
        self.records.append(Record(message, 1, ns, ns, tid or self.main_tid))

    def span(self, name: str, start_us: float, end_us: float, domain: str, rid: Any = None,
             tid: Optional[int] = None, **keys: Any) -> None:
        message: dict = {"domain": domain, "name": name, "type": 2}
        if rid is not None:
            message["rid"] = rid
        message.update(keys)
        self.records.append(Record(message, 2, _ns(start_us),
                                   _ns(end_us), tid or self.main_tid))

    def link(self, ts_us: float, external: str, internal: str) -> None:
        ns = _ns(ts_us)
        self.records.append(Record({"domain": "Engine", "name": "link", "type": 3,
                                    "from": external, "to": internal}, 1, ns, ns,
                                   self.main_tid))

    def raw(self, message: str, ts_us: float) -> None:
        """A row whose message text is written verbatim (for undecodable-message tests)."""
        ns = _ns(ts_us)
        self.records.append(Record({"__raw__": message}, 1, ns, ns, self.main_tid))


class Capture:
    """Processes of one (or several) services, written as real ``ms_service_*.db`` files."""

    def __init__(self) -> None:
        self.processes: list[Process] = []

    def process(self, host: str, pid: int, role: str = "", **meta: str) -> Process:
        proc = Process(host, pid, role, dict(meta))
        self.processes.append(proc)
        return proc

    def write(self, root: Path, layout: str = "per_process", encoding: str = "json",
              session: str = "1129-1200", with_role: bool = True) -> list[Path]:
        """Write every process; ``layout``: per_process | per_thread | trace_service."""
        folder = Path(root) / session
        if layout == "trace_service":
            folder = folder / "Trace_Service"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for proc in self.processes:
            meta = {"hostname": proc.host, "ppid": "1", **proc.meta}
            if with_role and proc.role:
                meta["role"] = proc.role
            rows = _rows(proc, encoding)
            if layout == "per_thread":
                for tid in sorted({row[6] for row in rows}):
                    path = folder / f"ms_service_{proc.host}-{proc.pid}-{tid}.db"
                    _write_db(path, [r for r in rows if r[6] == tid], meta, False)
                    paths.append(path)
            else:
                path = folder / f"ms_service_{proc.host}-{proc.pid}.db"
                _write_db(path, rows, meta, layout == "trace_service")
                paths.append(path)
        return paths


def _rows(proc: Process, encoding: str) -> list[tuple]:
    # markId follows emission order: events when marked, spans when they end.
    ordered = sorted(proc.records, key=lambda r: (r.end_ns, r.flag))
    rows = []
    for mark_id, rec in enumerate(ordered):
        if "__raw__" in rec.message:
            text = rec.message["__raw__"]
        elif encoding == "caret":
            text = caret_message(rec.message)
        else:
            text = json.dumps(rec.message)
        rows.append((text, rec.flag, mark_id, rec.start_ns, rec.end_ns, proc.pid, rec.tid))
    return rows


def _write_db(path: Path, rows: list[tuple], meta: dict, slice_column: bool) -> None:
    conn = sqlite3.connect(path)
    conn.execute(MSTX_DDL)
    if slice_column:
        conn.execute("CREATE TABLE Meta (name TEXT, value TEXT, slice TEXT)")
        conn.executemany("INSERT INTO Meta VALUES (?, ?, '')", list(meta.items()))
    else:
        conn.execute("CREATE TABLE Meta (name TEXT, value TEXT)")
        conn.executemany("INSERT INTO Meta VALUES (?, ?)", list(meta.items()))
    conn.executemany("INSERT INTO Mstx VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    conn.commit()
    conn.close()


# --- a simulated vLLM V1 service ---------------------------------------------------------------

@dataclass
class TrueRequest:
    """What really happened to one request in :func:`simulate_service` (µs since epoch)."""

    external: str
    internal: str
    arrival_us: float
    prompt_tokens: int
    output_tokens: int
    enqueue_us: float = 0.0
    first_scheduled_us: float = 0.0
    first_token_us: float = 0.0
    end_us: float = 0.0
    token_times: list = field(default_factory=list)


@dataclass
class Simulation:
    capture: Capture
    requests: list[TrueRequest]
    steps: int
    step_tokens: list  # scheduled tokens per step
    step_sizes: list  # requests per step
    kv_total: int


def simulate_service(n_requests: int, seed: int = 0, max_batch: int = 4,
                     start_us: float = 1_764_400_000_000_000.0, host: str = "node-a",
                     api_pid: int = 100, engine_pid: int = 200, max_output: int = 5,
                     max_prompt: int = 40, block_size: int = 16, kv_total: int = 1000,
                     engine_tid: Optional[int] = None,
                     first_exec_us: Optional[int] = None,
                     external_outputs: bool = False) -> Simulation:
    """A small but complete vLLM V1 run; arrival gaps, sizes and step times from ``seed``
    (``first_exec_us``: how long the first step's model runs, as a cold compile does).
    ``detokenize`` names EngineCore's ids, as the handlers write it; ``external_outputs``: the
    client's ids, as the handlers wrote it before."""
    rng = random.Random(seed)
    capture = Capture()
    api = capture.process(host, api_pid, "api_server")
    engine = capture.process(host, engine_pid, "engine_core")
    if engine_tid:
        engine.main_tid = engine_tid
    reqs: list[TrueRequest] = []
    t = start_us
    for i in range(n_requests):
        t += rng.randint(0, 3000)
        ext = f"cmpl-{seed:04x}{i:04x}-0"
        reqs.append(TrueRequest(ext, f"{ext}-{rng.getrandbits(32):08x}", t,
                                rng.randint(1, max_prompt), rng.randint(1, max_output)))
    for req in reqs:
        api.event("httpReq", req.arrival_us, rid=req.external)
        api.event("tokenize", req.arrival_us + 5, rid=req.external)
        api.link(req.arrival_us + 10, req.external, req.internal)
        req.enqueue_us = req.arrival_us + 50
    waiting: list[TrueRequest] = []
    running: list[TrueRequest] = []
    produced: dict[str, int] = {}
    iters: dict[str, int] = {}
    blocks: dict[str, int] = {}
    pending = sorted(reqs, key=lambda r: r.enqueue_us)
    clock = start_us
    steps = 0
    step_tokens: list = []
    step_sizes: list = []
    used = 0
    while pending or waiting or running:
        if not waiting and not running and pending:
            clock = max(clock, pending[0].enqueue_us)
        while pending and pending[0].enqueue_us <= clock:
            req = pending.pop(0)
            waiting.append(req)
            engine.event("Enqueue", req.enqueue_us, domain="Schedule", rid=[req.internal],
                         **{"QueueSize=": len(waiting), "scope#QueueName": "WAITING"})
        sched_start = clock + 10
        admitted = []
        while waiting and len(running) + len(admitted) < max_batch:
            admitted.append(waiting.pop(0))
        batch = running + admitted
        if not batch:
            clock = pending[0].enqueue_us if pending else clock
            continue
        sched_end = sched_start + rng.randint(50, 300)
        detail = []
        kinds = set()
        tokens = 0
        for req in batch:
            new = req in admitted
            n = req.prompt_tokens if new else 1
            computed = 0 if new else req.prompt_tokens + produced[req.internal] - 1
            rtype = 0 if new else 1
            kinds.add(rtype)
            it = iters.get(req.internal, -1) + 1
            iters[req.internal] = it
            detail.append({"rid": req.internal, "iter": it, "type": rtype,
                           "num_scheduled_tokens": n, "num_prompt_tokens": req.prompt_tokens,
                           "num_computed_tokens": computed})
            tokens += n
        batch_type = ",".join(k for k, v in (("Prefill", 0), ("Decode", 1)) if v in kinds)
        before = used
        for req in admitted:
            need = -(-(req.prompt_tokens + req.output_tokens) // block_size)
            blocks[req.internal] = need
            used += need
            req.first_scheduled_us = sched_end - 5
        if admitted:
            engine.event("Dequeue", sched_end - 5, domain="Schedule",
                         rid=[r.internal for r in admitted],
                         **{"QueueSize=": len(waiting), "scope#QueueName": "WAITING"})
            engine.event("Enqueue", sched_end - 4, domain="Schedule",
                         rid=[r.internal for r in admitted],
                         **{"QueueSize=": len(batch), "scope#QueueName": "RUNNING"})
        engine.event("KVCacheStatus", sched_end - 3, domain="Schedule.KVCache",
                     rid=[r.internal for r in batch],
                     **{"TotalBlocks=": kv_total, "UsedBlocks=": used,
                        "FreeBlocks=": kv_total - used, "UsagePercent=": used / kv_total,
                        "AllocatedBlocks=": used - before})
        engine.span("batchFrameworkProcessing", sched_start, sched_end, "Schedule", rid=detail,
                    batch_type=batch_type, batch_size=len(batch),
                    **{"num_scheduled_tokens=": tokens})
        exec_start = sched_end + 20
        exec_end = exec_start + rng.randint(500, 3000)
        if first_exec_us and steps == 0:
            exec_end = exec_start + first_exec_us
        engine.span("modelExec", exec_start, exec_end, "Execute", rid=detail,
                    batch_type=batch_type, batch_size=tokens)
        steps += 1
        step_tokens.append(tokens)
        step_sizes.append(len(batch))
        out_time = exec_end + rng.randint(100, 400)
        api.event("detokenize", out_time,
                  rid=[r.external if external_outputs else r.internal for r in batch])
        finished = []
        for req in batch:
            produced[req.internal] = produced.get(req.internal, 0) + 1
            req.token_times.append(out_time)
            done = produced[req.internal] >= req.output_tokens
            if produced[req.internal] == 1:
                # httpRes of a finished request is written before the call's detokenize.
                req.first_token_us = out_time - 20 if done else out_time
            if done:
                finished.append(req)
        for k, req in enumerate(finished):
            used -= blocks.pop(req.internal)
            engine.event("Free", exec_end + 30 + k, domain="Schedule.KVCache", rid=req.internal,
                         **{"deviceBlock=": kv_total - used, "UsagePercent=": used / kv_total})
            req.end_us = out_time - 20
            api.event("httpRes", req.end_us, rid=req.external,
                      **{"recvTokenSize=": req.prompt_tokens,
                         "replyTokenSize=": req.output_tokens})
        running = [r for r in batch if r not in finished]
        clock = exec_end + 50
    return Simulation(capture, reqs, steps, step_tokens, step_sizes, kv_total)


# --- the same capture as OTLP JSON lines -------------------------------------------------------

def _otlp_value(value: Any) -> dict:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, (list, tuple)):
        return {"arrayValue": {"values": [_otlp_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _otlp_attributes(attributes: dict) -> list:
    return [{"key": k, "value": _otlp_value(v)} for k, v in attributes.items()]


def span_attributes(message: dict, tid: int) -> dict:
    """A record's message keys as span-contract attributes (docs/span-contract.md)."""
    attrs: dict = {"thread.id": tid}
    for key, value in message.items():
        if key in ("name", "type"):
            continue
        if key == "domain":
            attrs["ms.domain"] = value
        elif key == "rid":
            if isinstance(value, list) and value and isinstance(value[0], dict):
                attrs["ms.rid_detail"] = json.dumps(value)
                attrs["ms.rid"] = [d["rid"] for d in value]
            else:
                attrs["ms.rid"] = value
        elif key in ("from", "to"):
            attrs[f"ms.link.{key}"] = value
        elif key.endswith("="):
            attrs["ms.metric." + key[:-1]] = value
        elif key.endswith("+"):
            attrs["ms.metric_inc." + key[:-1]] = value
        elif key.startswith("scope#"):
            attrs["ms.scope." + key[6:]] = value
        else:
            attrs[key] = value
    if message.get("type") == 3:
        attrs["ms.record"] = "link"
    elif message.get("type") == 0:
        attrs["ms.record"] = "event"
    return attrs


def write_otlp_json(capture: Capture, path: Path, spans_per_line: int = 50) -> Path:
    """Every process's records as ``ExportTraceServiceRequest`` JSON lines."""
    lines = []
    for proc in capture.processes:
        resource = {"attributes": _otlp_attributes(
            {"service.name": "vllm", "host.name": proc.host, "process.pid": proc.pid,
             "vllm.process.role": proc.role or "other"})}
        spans = []
        for i, rec in enumerate(proc.records):
            spans.append({
                "traceId": f"{proc.pid:016x}{i:016x}", "spanId": f"{i + 1:016x}",
                "name": rec.message.get("name", ""), "kind": 1,
                "startTimeUnixNano": str(rec.start_ns), "endTimeUnixNano": str(rec.end_ns),
                "attributes": _otlp_attributes(span_attributes(rec.message, rec.tid)),
                "status": {}})
        for start in range(0, max(len(spans), 1), spans_per_line):
            lines.append(json.dumps({"resourceSpans": [{
                "resource": resource,
                "scopeSpans": [{"scope": {"name": "otel_vllm_ascend"},
                                "spans": spans[start:start + spans_per_line]}]}]}))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


# profiler.db's tables of the trace, which ``--stream`` does not write.
TRACE_TABLES = frozenset({"process", "thread", "slice", "counter", "flow"})


def db_contents(path: Path, leave_out: frozenset = frozenset()) -> dict:
    """Each table's and view's schema and rows (a table's in rowid order) of a SQLite file,
    by name: two profiler.db files hold the same when these are equal, whatever order their
    tables were made in."""
    conn = sqlite3.connect(path)
    try:
        objects = conn.execute("SELECT type, name, sql FROM sqlite_master"
                               " WHERE name NOT LIKE 'sqlite_%'").fetchall()
        contents = {}
        for kind, name, sql in objects:
            if name not in leave_out:
                order = " ORDER BY rowid" if kind == "table" else ""
                contents[name] = (kind, sql, conn.execute(
                    f'SELECT * FROM "{name}"{order}').fetchall())
        return contents
    finally:
        conn.close()
