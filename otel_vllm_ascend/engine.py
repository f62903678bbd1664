"""Which vLLM engine will run, and which default records a symbol set cannot give on it.

Read without importing vLLM (start-up must stay cheap and before vLLM's own imports): the
installed version (:mod:`otel_vllm_ascend.versions`) and ``VLLM_USE_V1``.

* V1 is vLLM's default from 0.8; ``VLLM_USE_V1=0`` selects the old V0 engine up to 0.10.x (its
  worker is gone from 0.11 on, where the variable has no effect). Before 0.8 V0 is the default.
* The records of the span contract come from a few built-in handlers (:data:`RECORDS`); a
  record is missing when no entry with one of its handlers applies to this installation, or
  when this vLLM line cannot give it at all (:data:`LIMITATIONS`).
"""

from __future__ import annotations

import os
from typing import Iterable, List, NamedTuple, Optional, Tuple

from otel_vllm_ascend.versions import installed_vllm_version, is_untagged, parse_release

V1, V0, UNKNOWN = "V1", "V0", "unknown"

# What the default symbol file records, and the built-in handlers each record comes from.
RECORDS: Tuple[Tuple[str, frozenset], ...] = (
    ("request lifecycle (httpReq, httpRes, detokenize)",
     frozenset({"add_request_async", "process_outputs"})),
    ("batch span and queues (batchFrameworkProcessing, Enqueue, Dequeue)",
     frozenset({"schedule"})),
    ("KV cache events (KVCacheStatus, Free, CacheHitRate)",
     frozenset({"schedule", "free", "get_computed_blocks"})),
    ("model execution (modelExec)", frozenset({"execute_model"})),
    ("logits (computing_logits)", frozenset({"compute_logits"})),
    ("sampling (sample)", frozenset({"sampler_forward"})),
)


# What no symbol file can give on older vLLM lines: (what, why, first release that has it).
LIMITATIONS: Tuple[Tuple[str, str, Tuple[int, ...]], ...] = (
    ("links of engine spans (batch, modelExec) to each request's trace",
     "vLLM before 0.10.2 carries no trace headers from the API server to EngineCore; the "
     "records still name their requests", (0, 10, 2)),
)


class Engine(NamedTuple):
    version: Optional[str]
    engine: str  # V1, V0 or unknown
    reason: str

    def describe(self) -> str:
        return f"vLLM {self.version or '(not installed)'}, {self.engine} engine ({self.reason})"


def detect(version: Optional[str] = None, use_v1: Optional[str] = None) -> Engine:
    """The engine vLLM will run; ``version`` / ``use_v1`` default to the installation's."""
    if version is None:
        version = installed_vllm_version()
    if use_v1 is None:
        use_v1 = os.environ.get("VLLM_USE_V1")
    if version is None:
        return Engine(None, UNKNOWN, "vLLM is not installed here")
    if is_untagged(version):
        return Engine(version, V1 if use_v1 != "0" else V0,
                      f"untagged build; assumed from VLLM_USE_V1={use_v1 or 'unset'}")
    release = parse_release(version)[:2]
    flag = (use_v1 or "").strip()
    if flag not in ("", "0", "1"):
        return Engine(version, UNKNOWN, f"VLLM_USE_V1={use_v1!r} is neither 0 nor 1")
    if flag == "0":
        if release >= (0, 11):
            return Engine(version, V1, "VLLM_USE_V1=0 has no effect: this vLLM has no V0 engine")
        return Engine(version, V0, "VLLM_USE_V1=0")
    if release < (0, 8) and flag != "1":
        return Engine(version, V0, "the default before vLLM 0.8")
    return Engine(version, V1, "VLLM_USE_V1=1" if flag == "1" else "the default")


# The vLLM lines the default symbol file was checked on (docs/compatibility.md).
CHECKED_LINES = ((0, 9, 1), (0, 32))


def outside_checked_lines(engine: Engine) -> Optional[str]:
    """A sentence when this vLLM is older or newer than every line the tool was run on."""
    if engine.version is None or is_untagged(engine.version):
        return None
    release = parse_release(engine.version)
    low, high = CHECKED_LINES
    if release < low or release[:len(high)] > high:
        return (f"vLLM {engine.version} is outside the lines this tool is checked on "
                f"({'.'.join(map(str, low))} to {'.'.join(map(str, high))}.x): entries whose "
                "target is missing or has another signature step aside, each said once")
    return None


class MissingRecord(NamedTuple):
    record: str
    reason: str


def missing_records(engine: Engine, available: Iterable[Tuple[Optional[str], bool, str]]
                    ) -> List[MissingRecord]:
    """Default records that will not be written.

    ``available``: per symbol entry, (canonical built-in handler short name or None, whether
    the entry will be hooked here, why not). A record is missing when none of its handlers is
    available.
    """
    if engine.engine == UNKNOWN:
        return [MissingRecord("every record", f"the engine is unknown ({engine.reason}); "
                              "hooks that find nothing to hook stay silent")]
    if engine.engine == V0:
        why = (f"the V0 engine runs ({engine.reason}); the V1 hooks of the symbol file never "
               "fire")
        return [MissingRecord(record, why) for record, _ in RECORDS]
    entries = list(available)
    missing = [MissingRecord(what, why) for what, why, below in LIMITATIONS
               if engine.version and not is_untagged(engine.version)
               and parse_release(engine.version) < below]
    for record, handlers in RECORDS:
        relevant = [(ok, why) for name, ok, why in entries if name in handlers]
        if any(ok for ok, _ in relevant):
            continue
        reasons = sorted({why for _, why in relevant if why})
        missing.append(MissingRecord(record, "; ".join(reasons) if reasons
                                     else "no entry of the symbol file records it"))
    return missing


def handler_short_name(handler: Optional[str]) -> Optional[str]:
    """The built-in short name a handler path resolves to (ours or an alias), else None."""
    if handler is None:
        return None
    from otel_vllm_ascend.handlers import BUILTIN_HANDLERS, resolve_builtin

    canonical = resolve_builtin(handler)
    for name, path in BUILTIN_HANDLERS.items():
        if path == canonical:
            return name
    return None
