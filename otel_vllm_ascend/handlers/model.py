"""Model execution handlers (domain ``Execute``).

* ``MultiprocExecutor.execute_model`` / ``UniProcExecutor.execute_model`` (EngineCore) -> span
  ``modelExec`` per non-empty engine step, with the batch details, ``batch_type`` and
  ``batch_size`` = scheduled **tokens**. vLLM 0.32's ``EngineCore.step`` calls it with
  ``non_block=True`` and gets a Future: the span then ends when that Future completes, so it
  covers the model's real execution, not only its dispatch. The span links to the traces of the
  batch's requests.
* ``LogitsProcessor.forward`` -> span ``computing_logits``; ``Sampler.forward`` -> span
  ``sample`` (Worker). On Ascend (``torch_npu`` importable) the NPU stream is synchronised
  before and after the call, as the reference does, so the span measures device work; nowhere
  else.
* vllm-ascend's ``ProfileExecuteDuration.capture_async(tag)`` (a context manager) -> a span named
  by the tag around the ``with`` block (synchronised for tag ``forward`` on NPU).
* The model runner's ``execute_model`` (Worker; ``GPUModelRunner`` and ``CPUModelRunner`` of
  vLLM, ``NPUModelRunner`` of vllm-ascend) -> span ``modelRunnerExec`` per non-empty step, with
  ``ms.rid`` = the step's request ids and, when the step verified speculative drafts before the
  runner returned (vLLM before 0.11.1, where sampling ran inside ``execute_model``),
  ``spec_decode_accepted_by_req`` (JSON text ``{"<request id>": accepted drafts}``). Also records
  the worker's ``dpRankId`` once (``handlers.meta``) and, in a Worker process, advances the
  torch_npu profiler once per step (EngineCore's ``modelExec`` does it where the model runs
  inside EngineCore).
* ``record_function_or_nullcontext(tag)``, which model runners wrap their phases in (vLLM's
  since 0.10.2, vllm-ascend's since 0.15): a span per phase around the ``with`` block, named as
  msserviceprofiler names them (:data:`RUNNER_PHASES`: ``prepare input``, ``forward``, ``post
  process``, ``sample_token``, ``draft_token``, and vllm-ascend's EPLB and async-state phases;
  vLLM's own tags map to the same names). ``forward`` carries the step's ``ms.rid`` and is
  synchronised on NPU. Other tags pass through unrecorded. Hooked in the runner's module (the
  name the runner looks up), not where it is defined. Where ``_hotpath.c`` is built, a phase's
  begin, entry and exit run in C once the Python twin has done its once-per-process work.
"""

from __future__ import annotations

import contextlib
import functools
import json
import operator
import os
import time
from typing import Any, Callable, List, NamedTuple, Optional

from otel_vllm_ascend import (
    contract,
    control,
    handoff,
    hotpath,
    native_thread,
    operator_profiler,
    recorder,
    selfmeter,
    wrapping,
)
from otel_vllm_ascend.handlers import common, meta, spec_decode
from otel_vllm_ascend.records import CapturedException, SpanRecord, new_span_record

DOMAIN = "Execute"

_meter, _meter_ns = selfmeter.meter, time.thread_time_ns
_npu_synchronize: Optional[Callable[[], None]] = None
_npu_checked = False
_step_request_ids: List[str] = []  # the model runner's current step, for its forward phase


def npu_synchronize() -> Optional[Callable[[], None]]:
    """``torch.npu.synchronize`` when torch_npu imports here, else None (checked once)."""
    global _npu_synchronize, _npu_checked
    if not _npu_checked:
        _npu_checked = True
        try:
            import torch
            import torch_npu  # noqa: F401

            _npu_synchronize = torch.npu.synchronize  # type: ignore[attr-defined]
        except Exception:
            _npu_synchronize = None
    return _npu_synchronize


def _execute_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    scheduler_output = args[0] if args else kwargs.get("scheduler_output")
    total_tokens = int(getattr(scheduler_output, "total_num_scheduled_tokens", 0) or 0)
    if total_tokens <= 0 or not control.engine_step(scheduler_output):
        return None
    if common._role_recorded is None:
        common.ensure_role("engine_core")
    batch = common.describe_batch(scheduler_output)
    if not batch.classified:  # schedule's hook did not record the step (it is not hooked)
        common.record_step(_expand_model_exec, batch, None)
    start, tid = native_thread.stamp()
    return batch, total_tokens, start, tid


def _finish_model_exec(batch: common.StepBatch, total_tokens: int, start: int, tid: int) -> None:
    common.record_step(_expand_model_exec, batch, (start, time.time_ns(), tid, total_tokens))


# The self meter's row for the completion callback, which runs after the hook's wrapper returned
# (on the thread that collects the worker's output: EngineCore's, in vLLM 0.32).
COMPLETION_SYMBOL = "execute_model: completion"


_in_execute_after = False  # a Future done already runs its callback inside the hook's half


def _model_exec_completed(batch: common.StepBatch, total_tokens: int, start: int, tid: int,
                          _: Any = None) -> None:
    began = _meter_ns() if _meter.on and not _in_execute_after else 0
    _finish_model_exec(batch, total_tokens, start, tid)
    if began:
        _meter.add_hot(_meter_ns() - began, COMPLETION_SYMBOL)


def _execute_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                   error: Optional[BaseException]) -> None:
    global _in_execute_after
    add_done_callback = getattr(result, "add_done_callback", None)
    if add_done_callback is None:
        _finish_model_exec(*state)
        return
    # Runs once the worker's output arrives (or the call fails); at once, inside this half and
    # metered with it, for a Future done already (vLLM's UniProcExecutor). Not asking done()
    # first spares a lock of the Future's per step.
    _in_execute_after = True
    try:
        add_done_callback(functools.partial(_model_exec_completed, *state))
    finally:
        _in_execute_after = False


def _model_exec_span(batches: common.RemoteBatches, seq: int, span: tuple) -> SpanRecord:
    """``modelExec`` of one step from what the executor's hook captured."""
    start, end, tid, total_tokens = span
    attributes = batches.add_details(batches.batch_attributes(DOMAIN, seq, total_tokens), seq)
    return new_span_record(SpanRecord, ("modelExec", start, end, attributes, None, None,
                                        batches.links(seq), None, tid, None))


_expand_model_exec = common.step_expander("engine.model_exec", _model_exec_span)


execute_model = wrapping.AroundHandler(
    _execute_before, _execute_after, "execute_model",
    "Executor ``execute_model(scheduler_output, non_block=False)``: span ``modelExec``.")


def _synchronised_before(this: Any, args: tuple, kwargs: dict) -> tuple:
    if common._role_recorded is None:
        common.ensure_role("worker")
    synchronize = _npu_synchronize if _npu_checked else npu_synchronize()
    if synchronize is not None:
        synchronize()
    start, tid = native_thread.stamp()
    return start, tid, synchronize


def _synchronised_after(name: str) -> Callable:
    def after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
              error: Optional[BaseException]) -> None:
        start, tid, synchronize = state
        if synchronize is not None and error is None:
            try:
                synchronize()
            except BaseException as exc:
                record_worker_span(name, start, time.time_ns(), tid, None, exc)
                raise
        if _open_step is not None and error is None:  # the common case, inlined
            _open_step.append((name, start, time.time_ns(), tid, None, None, None))
        else:
            record_worker_span(name, start, time.time_ns(), tid, None, error)
    return after


compute_logits = wrapping.AroundHandler(
    _synchronised_before, _synchronised_after("computing_logits"), "compute_logits",
    "``LogitsProcessor.forward``: span ``computing_logits``.", after_errors=True)
sampler_forward = wrapping.AroundHandler(
    _synchronised_before, _synchronised_after("sample"), "sampler_forward",
    "``Sampler.forward``: span ``sample``.", after_errors=True)


def capture_async(original: Any, this: Any, duration_tag: Any = None, *args: Any,
                  **kwargs: Any) -> Any:
    """vllm-ascend ``ProfileExecuteDuration.capture_async(duration_tag)``: span named by the tag."""
    common.ensure_role("worker")
    name = str(duration_tag or "capture_async")
    synchronize = npu_synchronize() if name == "forward" else None
    manager = original(duration_tag, *args, **kwargs)
    start = time.time_ns()
    tid = native_thread.current.id

    def on_exit(error: Optional[BaseException]) -> None:
        if synchronize is not None:
            synchronize()
        record_worker_span(name, start, time.time_ns(), tid, None, error)

    return wrapping.DelegatingContext(manager, on_exit)


# -- the Worker's spans: one record per model-runner step ---------------------------------------
#
# The runner's span and the spans that end inside its call (its phases, ``computing_logits``)
# go as one record, queued when the runner returns; a recorded phase outside a runner call (the
# sampling phase of vLLM 0.32's ``sample_tokens``) likewise with the spans ending inside it
# (``sample``), any other span outside a runner call as one record. A span is a WorkerSpan of plain
# values; the expander (in the writer, or on the recorder's thread without one) makes the same
# span records, in the order the spans ended, as one record per span did.

class WorkerSpan(NamedTuple):
    """One Worker span as its hook captured it. The hooks queue these fields as a plain tuple
    (what marshal takes, so the hand-off sends a step's spans as they are)."""

    name: str
    start_ns: int
    end_ns: int
    thread_id: int
    request_ids: Optional[list]  # ``ms.rid`` (the runner's and the forward phase's)
    accepted: Optional[dict]  # ``spec_decode_accepted_by_req`` (JSON text) of the runner
    exception: Any  # None, an exception (captured as text on the recorder's thread)


_open_step: Optional[list] = None  # spans ended during the current runner call, in order


def record_worker_span(name: str, start: int, end: int, tid: int,
                       request_ids: Optional[list], error: Optional[BaseException]) -> None:
    span = (name, start, end, tid, request_ids, None, error)  # a WorkerSpan's fields
    if _open_step is not None:
        _open_step.append(span)
    else:
        recorder.record_task(_expand_worker_spans, [span])


_EXCEPTION = operator.itemgetter(6)  # a WorkerSpan's exception


def _worker_spans_to_wire(spans: list) -> list:
    """The spans as they are (plain tuples), unless one carries an exception (as text)."""
    if not any(map(_EXCEPTION, spans)):  # the loop in C
        return spans
    return [span if span[6] is None
            else tuple(span[:6]) + (tuple(handoff.capture_exception(span[6])),)
            for span in spans]


def _worker_span_records(state: dict, wire: list) -> list:
    records = []
    for name, start, end, tid, request_ids, accepted, exception in wire:
        attributes: dict = {contract.DOMAIN: DOMAIN}
        if request_ids is not None:
            attributes[contract.RID] = request_ids
        if accepted:
            attributes["spec_decode_accepted_by_req"] = json.dumps(accepted)
        records.append(new_span_record(SpanRecord, (
            name, start, end, attributes, None, None, None,
            CapturedException(*exception) if exception is not None else None, tid, None)))
    return records


_expand_worker_spans = handoff.register_expander("worker.spans", _worker_spans_to_wire,
                                                 _worker_span_records)


def _runner_before(this: Any, args: tuple, kwargs: dict) -> Optional[tuple]:
    global _step_request_ids, _open_step
    spec_decode.begin_step()
    scheduler_output = args[0] if args else kwargs.get("scheduler_output")
    request_ids = list(getattr(scheduler_output, "num_scheduled_tokens", None) or ())
    _step_request_ids = request_ids
    if not request_ids:
        return None
    if common._role_recorded is None:
        common.ensure_role("worker")
    if not meta._recorded:
        meta.record_worker_dp_rank(this)
    operators = operator_profiler._collector
    if operators is not None and operators.busy:  # armed, or a window open (step_begin())
        operators.step_begin()
    outer, _open_step = _open_step, []
    start, tid = native_thread.stamp()
    return request_ids, start, tid, outer


def _runner_after(state: tuple, this: Any, args: tuple, kwargs: dict, result: Any,
                  error: Optional[BaseException]) -> None:
    global _open_step
    end = time.time_ns()
    request_ids, start, tid, outer = state
    spans, _open_step = _open_step, outer
    operators = operator_profiler._collector
    if operators is not None and operators._marker is not None:  # step_end(), inlined
        operators.step_end()
    spans = spans if spans is not None else []
    spans.append(("modelRunnerExec", start, end, tid, request_ids,  # a WorkerSpan's fields
                  spec_decode._step.accepted_by_request, error))  # step_acceptance()
    if outer is not None:  # a runner call inside another: its spans join the outer step's
        outer.extend(spans)
    else:
        recorder.record_task(_expand_worker_spans, spans)


execute_model_runner = wrapping.AroundHandler(
    _runner_before, _runner_after, "execute_model_runner",
    "Model runner ``execute_model(scheduler_output)``: span ``modelRunnerExec``.",
    after_errors=True)


# msserviceprofiler's phase names, by the tag the runner passes: vllm-ascend's own tags, then
# vLLM's for the same phases (0.10.2-0.11.0 capitalised, then prefixed "gpu_model_runner: ").
RUNNER_PHASES = {
    **{name: name for name in ("prepare input", "forward", "post process", "sample_token",
                               "draft_token", "EPLB weight D2D", "EPLB update",
                               "async_state_update")},
    "Preprocess": "prepare input", "Forward": "forward", "Postprocess": "post process",
    "Sample": "sample_token", "Draft": "draft_token",
    "gpu_model_runner: preprocess": "prepare input",
    "gpu_model_runner: forward": "forward",
    "gpu_model_runner: postprocess": "post process",
    "gpu_model_runner: sample": "sample_token",
    "gpu_model_runner: draft": "draft_token",
}


# The self meter's row for the phases' exits, which run after the hook's wrapper returned.
PHASE_EXIT_SYMBOL = "record_function_or_nullcontext: phase exit"
_nullcontext = contextlib.nullcontext


class _PhaseContext:
    """The runner's context manager for one phase, recording the phase's span at its exit;
    every other attribute reads through to it (what ``record_function_or_nullcontext`` hands
    the runner when recording). Made by :func:`_phase_begins`; its exit, where the record is
    made, is metered (the hook's wrapper returned before it)."""

    # state: (phase, request ids or None, start, thread id, synchronize or None) in one slot:
    # with __getattr__ defined, each attribute read takes the type's slower path
    __slots__ = ("target", "state", "own")

    def __enter__(self):  # noqa: ANN204
        global _open_step
        target = self.target
        # vLLM's usual context is a nullcontext, whose methods do nothing: not called
        entered = target.enter_result if type(target) is _nullcontext else target.__enter__()
        if _open_step is None:
            # A phase outside the runner's call (vLLM 0.32's sampling phase, with ``sample``
            # inside it): the spans that end inside it go with its own, as one record.
            _open_step = self.own = []
        return entered

    def __exit__(self, exc_type, exc, tb):  # noqa: ANN001, ANN204
        global _open_step
        target = self.target
        try:
            return None if type(target) is _nullcontext else target.__exit__(exc_type, exc, tb)
        finally:
            began = _meter_ns() if _meter.on else 0
            try:
                phase, request_ids, start, tid, synchronize = self.state
                own = self.own
                if own is not None and _open_step is own:
                    _open_step = None
                if synchronize is not None:
                    synchronize()
                end = time.time_ns()
                if own is not None:  # a WorkerSpan's fields, after the spans inside it
                    own.append((phase, start, end, tid, request_ids, None, exc))
                    recorder.record_task(_expand_worker_spans, own)
                elif _open_step is not None and exc is None:  # the common case, inlined
                    _open_step.append((phase, start, end, tid, request_ids, None, None))
                else:
                    record_worker_span(phase, start, end, tid, request_ids, exc)
            except Exception:  # our bookkeeping must not replace the block's outcome
                pass
            if began:
                _meter.add_hot(_meter_ns() - began, PHASE_EXIT_SYMBOL)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.target, name)


_new_phase = object.__new__
_phase_of = RUNNER_PHASES.get


def _phase_begins(state: Any, this: Any, args: tuple, kwargs: dict, result: Any,
                  error: Optional[BaseException]) -> Any:
    """The hook's only half (``after``; no ``before``): the runner's call of
    ``record_function_or_nullcontext(name)`` only makes its context manager, so the phase
    starts once that returned. The runner's own context manager comes back as it is for a
    phase the span contract has no record for. A plain function making the object: a class
    as the half costs a type call per phase (docs/benchmarks.md, issue 17, sixteenth part)."""
    name = args[0] if args else kwargs.get("name")
    phase = _phase_of(name) if type(name) is str else None
    if phase is None:
        return result
    if common._role_recorded is None:
        common.ensure_role("worker")
    synchronize = _npu_synchronize if _npu_checked else npu_synchronize()
    if synchronize is None and _compiled_phase_begins is not None:
        _compiled_phase_begins.ready = True  # from the next phase on it does without this
    self = _new_phase(_PhaseContext)
    self.target = result
    self.own = None  # the spans ending inside a phase outside any runner call
    request_ids = None
    if phase == "forward":
        if synchronize is not None:
            synchronize()
        request_ids = _step_request_ids or None
    else:
        synchronize = None
    self.state = (phase, request_ids) + native_thread.stamp() + (synchronize,)
    return self


# The same in C where it is built (``_hotpath.PhaseBegins`` and its ``PhaseContext``): a phase
# costs no Python frame of ours. This function stays its reference (tests/unit/test_hotpath.py)
# and runs until the process's role is recorded and no NPU needs synchronising.
_compiled_phase_begins = None if hotpath._built is None else hotpath._built.PhaseBegins(
    RUNNER_PHASES, globals(), _phase_begins, _nullcontext, recorder.record_task,
    _expand_worker_spans, record_worker_span, _meter, PHASE_EXIT_SYMBOL)


def _after_fork_in_child() -> None:
    if _compiled_phase_begins is not None:
        _compiled_phase_begins.ready = False  # the child records its role again


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


record_function_or_nullcontext = wrapping.AroundHandler(
    wrapping.always, _phase_begins, "record_function_or_nullcontext",
    "``record_function_or_nullcontext(name)`` of a model runner: a span per known phase, from "
    "the phase's entry to its exit (the runner gets a transparent context manager around "
    "its own).", wraps_result=True, only_first=frozenset(RUNNER_PHASES),
    compiled_after=_compiled_phase_begins)


