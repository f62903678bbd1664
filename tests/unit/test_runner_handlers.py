"""Model-runner handlers (Worker) against vLLM 0.32's real objects.

Real: the runner module ``vllm.v1.worker.gpu_model_runner`` and its
``record_function_or_nullcontext`` name, ``RejectionSampler`` running its CPU kernels
(registered as vLLM's worker does at start), ``SpecDecodeMetadata``, ``SchedulerOutput`` with
``scheduled_spec_decode_tokens``, ``ParallelConfig``. The runner itself needs a model, so its
methods run on an object with the attributes the handlers read from ``GPUModelRunner``
(``input_batch.req_ids``, ``parallel_config``), checked against the installed class below.
"""

from __future__ import annotations

import inspect
import json
import time
import types
from itertools import chain

import numpy as np
import pytest
from runtime_helpers import Capture, instrument, spec
from vllm_tiers import skip_module_unless_vllm

from otel_vllm_ascend import contract, control, recorder, selfmeter
from otel_vllm_ascend.config import ProfilerConfig
from otel_vllm_ascend.exporters.message import span_to_records
from otel_vllm_ascend.handlers import common, meta, model, spec_decode

# vLLM (and torch, which it brings) before anything of theirs: without them this module is
# skipped at collection, not an error.
pytest.importorskip("vllm", reason="needs vLLM's real classes (make test)")
torch = pytest.importorskip("torch", reason="needs torch (comes with vLLM)")
skip_module_unless_vllm("0.32", "0.32's model runner, sampler and spec-decode classes")

import vllm.v1.worker.gpu_model_runner as gpu_model_runner  # noqa: E402
from vllm.config import ParallelConfig  # noqa: E402
from vllm.platforms import current_platform  # noqa: E402
from vllm.v1.core.sched.output import CachedRequestData, SchedulerOutput  # noqa: E402
from vllm.v1.sample.logits_processor import LogitsProcessors  # noqa: E402
from vllm.v1.sample.metadata import SamplingMetadata  # noqa: E402
from vllm.v1.sample.rejection_sampler import (  # noqa: E402
    PLACEHOLDER_TOKEN_ID,
    RejectionSampler,
    rejection_sample,
)
from vllm.v1.sample.sampler import Sampler  # noqa: E402
from vllm.v1.spec_decode.metadata import SpecDecodeMetadata  # noqa: E402
from vllm.v1.worker.gpu_input_batch import InputBatch  # noqa: E402

VOCAB = 16


@pytest.fixture
def capture():
    cap = Capture()
    recorder.set_tracer_provider(cap.provider)
    control.start(config=ProfilerConfig(enable=True))
    common._role_recorded = None
    meta._recorded = False
    spec_decode.begin_step()
    yield cap
    control.stop()
    recorder.flush()
    recorder.set_tracer_provider(None)


# vLLM's worker registers the C++ stand-ins of the rejection sampler's Triton kernels at
# start-up (worker_base); without Triton nothing else runs them. Done at collection, as early as
# a worker does it: vLLM's registration scans every loaded module and trips over llvmlite's
# objects once another test has imported numba (through vLLM's model modules).
current_platform.register_triton_kernel_overrides()


def decode_step(computed, drafts):
    """A SchedulerOutput of decode requests: ``computed`` rid -> computed tokens, ``drafts``
    rid -> draft token ids scheduled for verification."""
    cached = CachedRequestData.make_empty()
    scheduled = {}
    for rid, count in computed.items():
        cached.req_ids.append(rid)
        cached.num_computed_tokens.append(count)
        cached.num_output_tokens.append(1)
        cached.new_block_ids.append(None)
        scheduled[rid] = 1 + len(drafts.get(rid, ()))
    return SchedulerOutput(scheduled_new_reqs=[], scheduled_cached_reqs=cached,
                           num_scheduled_tokens=scheduled,
                           total_num_scheduled_tokens=sum(scheduled.values()),
                           scheduled_spec_decode_tokens=dict(drafts),
                           scheduled_encoder_inputs={}, num_common_prefix_blocks=[0],
                           finished_req_ids=set(), free_encoder_mm_hashes=[])


def verification_inputs(drafts, targets):
    """Metadata and logits for a greedy verification of ``drafts`` (per batch row) where the
    target model picks ``targets[row]`` at each of the row's ``drafts + 1`` positions, with the
    indices vLLM's ``_calc_spec_decode_metadata`` computes."""
    metadata = SpecDecodeMetadata.make_dummy(drafts, torch.device("cpu"))
    num_draft = np.array([len(d) for d in drafts])
    cu_sampled = np.cumsum(num_draft + 1)
    metadata.bonus_logits_indices = torch.tensor(cu_sampled - 1)
    metadata.target_logits_indices = torch.tensor(np.concatenate(
        [np.arange(end - n - 1, end - 1) for end, n in zip(cu_sampled, num_draft)]
    ).astype(np.int64))
    logits = torch.full((int(cu_sampled[-1]), VOCAB), -10.0)
    for row, token in enumerate(chain.from_iterable(targets)):
        logits[row, token] = 10.0
    rows = len(drafts)
    sampling = SamplingMetadata(
        temperature=None, all_greedy=True, all_random=False, top_p=None, top_k=None,
        generators={}, max_num_logprobs=None, no_penalties=True, prompt_token_ids=None,
        frequency_penalties=torch.zeros(rows), presence_penalties=torch.zeros(rows),
        repetition_penalties=torch.ones(rows), output_token_ids=[[] for _ in range(rows)],
        allowed_token_ids_mask=None, bad_words_token_ids={}, logitsprocs=LogitsProcessors())
    return metadata, logits, sampling


class Runner:
    """What the handlers read from ``GPUModelRunner`` (checked in
    :func:`test_runner_shape_matches_vllm`)."""

    def __init__(self, batch_order, parallel_config=None):
        self.input_batch = types.SimpleNamespace(req_ids=list(batch_order))
        self.parallel_config = parallel_config or ParallelConfig()


def test_runner_shape_matches_vllm():
    assert isinstance(InputBatch.req_ids, property)
    source = inspect.getsource(gpu_model_runner.GPUModelRunner.__init__)
    assert "self.parallel_config = vllm_config.parallel_config" in source
    assert "self.input_batch = InputBatch(" in source
    params = list(inspect.signature(
        gpu_model_runner.GPUModelRunner.propose_draft_token_ids).parameters)
    assert params[:2] == ["self", "scheduler_output"]
    assert PLACEHOLDER_TOKEN_ID == spec_decode.REJECTED


# -- record_function_or_nullcontext --------------------------------------------------------------

def _runner_function(module, source):
    """A function whose global names are ``module``'s, as a method of the runner looks them up."""
    code = compile(source, module.__file__, "exec")
    (body,) = [c for c in code.co_consts if isinstance(c, types.CodeType)]
    return types.FunctionType(body, vars(module), body.co_name, (False,))


PHASES = """
def step(fail=False):
    seen = []
    with record_function_or_nullcontext("gpu_model_runner: preprocess") as value:
        seen.append(value)
    with record_function_or_nullcontext("gpu_model_runner: forward"):
        pass
    with record_function_or_nullcontext("gpu_model_runner: bookkeep") as value:
        seen.append(value)
    with record_function_or_nullcontext("gpu_model_runner: sample"):
        if fail:
            raise KeyError("sampling failed")
    return seen
"""


def test_phases_are_caught_where_the_runner_looks_the_name_up(capture):
    original = gpu_model_runner.record_function_or_nullcontext
    instrumentor = instrument(capture, [spec(
        "vllm.v1.worker.gpu_model_runner", "record_function_or_nullcontext",
        handler="record_function_or_nullcontext", domain="Execute")])
    try:
        assert gpu_model_runner.record_function_or_nullcontext is not original
        step = _runner_function(gpu_model_runner, PHASES)
        # The with-blocks get what vLLM's own context manager gives (nullcontext: the name).
        assert step() == ["gpu_model_runner: preprocess", "gpu_model_runner: bookkeep"]
        spans = [s for s in capture.spans() if s.name != contract.META_NAME]
        assert [s.name for s in spans] == ["prepare input", "forward", "sample_token"]
        assert {s.attributes[contract.DOMAIN] for s in spans} == {"Execute"}
        capture.clear()
        with pytest.raises(KeyError, match="sampling failed"):
            step(fail=True)
        failed = capture.named("sample_token")[0]
        assert not failed.status.is_ok
        assert failed.events[0].attributes["exception.type"] == "KeyError"
    finally:
        instrumentor.uninstrument()
    assert gpu_model_runner.record_function_or_nullcontext is original


def test_vllm_runner_tags_are_the_mapped_ones():
    source = inspect.getsource(gpu_model_runner)
    for tag in model.RUNNER_PHASES:
        if tag.startswith("gpu_model_runner: "):
            assert f'record_function_or_nullcontext("{tag}")' in source, tag


def test_phase_context_is_transparent_and_the_original_runs_once(capture):
    calls = []

    class Scope:
        def __init__(self, name):
            self.name = name

        def __enter__(self):
            return f"entered {self.name}"

        def __exit__(self, *exc):
            calls.append(("exit", exc[0]))
            return True  # a manager that swallows the error: the hook must keep that

    def original(name):
        calls.append(("call", name))
        return Scope(name)

    with model.record_function_or_nullcontext(original, None, "forward") as value:
        assert value == "entered forward"
        raise ValueError("swallowed by the manager")
    assert calls == [("call", "forward"), ("exit", ValueError)]
    (span,) = capture.named("forward")
    assert not span.status.is_ok  # the block failed, even though the manager swallowed it
    unrecorded = model.record_function_or_nullcontext(original, None, "schedule: allocate")
    assert isinstance(unrecorded, Scope)  # other tags: vLLM's own object, untouched


def test_the_self_meter_counts_a_phase_exit_and_not_the_runners_own(capture, monkeypatch):
    """The phase's record is made at its exit, after the hook's wrapper returned: the exit has
    a row of its own in the self meter; the runner's own ``__exit__`` is not ours."""
    monkeypatch.setattr(selfmeter.meter, "on", True)
    monkeypatch.setattr(selfmeter.meter, "by_symbol", {})

    class SlowExit:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            deadline = time.thread_time_ns() + 20_000_000
            while time.thread_time_ns() < deadline:  # 20 ms of the runner's own CPU
                pass

    for _ in range(2):
        with model.record_function_or_nullcontext(lambda name: SlowExit(), None, "forward"):
            pass
    calls, ns = selfmeter.meter.by_symbol[model.PHASE_EXIT_SYMBOL]
    assert calls == 2 and 0 < ns < 10_000_000
    assert [s.name for s in capture.named("forward")] == ["forward", "forward"]
    monkeypatch.setattr(selfmeter.meter, "on", False)
    with model.record_function_or_nullcontext(lambda name: SlowExit(), None, "forward"):
        pass
    assert selfmeter.meter.by_symbol[model.PHASE_EXIT_SYMBOL][0] == 2


def test_forward_phase_carries_the_runner_step_requests(capture):
    output = decode_step({"r-1": 5, "r-2": 9}, {})

    def execute(scheduler_output, intermediate_tensors=None):
        with model.record_function_or_nullcontext(
                gpu_model_runner.record_function_or_nullcontext, None,
                "gpu_model_runner: forward"):
            return None

    model.execute_model_runner(execute, Runner(["r-1", "r-2"]), output)
    (forward,) = capture.named("forward")
    assert list(forward.attributes[contract.RID]) == ["r-1", "r-2"]


# -- modelRunnerExec and the worker's DP rank ----------------------------------------------------

def test_model_runner_exec_span(capture):
    runner = Runner(["r-1"])
    output = decode_step({"r-1": 5}, {})
    assert model.execute_model_runner(lambda so, it=None: "out", runner, output) == "out"
    assert model.execute_model_runner(lambda so: None, runner, decode_step({}, {})) is None

    def failing(scheduler_output):
        raise RuntimeError("runner failed")

    with pytest.raises(RuntimeError, match="runner failed"):
        model.execute_model_runner(failing, runner, output)
    spans = capture.named("modelRunnerExec")
    assert len(spans) == 2
    assert list(spans[0].attributes[contract.RID]) == ["r-1"]
    assert spans[0].attributes[contract.DOMAIN] == "Execute"
    assert "spec_decode_accepted_by_req" not in spans[0].attributes
    assert not spans[1].status.is_ok
    metas = [s.attributes for s in capture.named(contract.META_NAME)]
    assert [list(m) for m in metas] == [["ms.meta.role", "ms.record", "thread.id"]]  # no DP


def test_worker_dp_rank_once_from_the_parallel_config(capture):
    runner = Runner(["r-1"], ParallelConfig(data_parallel_size=2, data_parallel_rank=1))
    for _ in range(3):
        model.execute_model_runner(lambda so: None, runner, decode_step({"r-1": 5}, {}))
    ranks = [s.attributes.get("ms.meta.dpRankId") for s in capture.named(contract.META_NAME)]
    assert [r for r in ranks if r is not None] == ["1"]


def test_init_data_parallel_worker_prefers_the_runner_rank(capture):
    runner = Runner(["r-1"], ParallelConfig(data_parallel_size=4, data_parallel_rank=0))
    runner.dp_rank = 3  # vllm-ascend's NPUModelRunner keeps its own
    assert meta.init_data_parallel_worker(lambda so: "ran", runner, None) == "ran"
    assert meta.init_data_parallel_worker(lambda so: "ran", runner, None) == "ran"
    ranks = [s.attributes.get("ms.meta.dpRankId") for s in capture.named(contract.META_NAME)]
    assert [r for r in ranks if r is not None] == ["3"]
    assert meta.worker_dp_rank(Runner([], ParallelConfig())) is None


# -- speculative decoding ------------------------------------------------------------------------

# Batch order r-b, r-a, r-c (not the scheduler's dict order): r-b drafts 3 tokens and accepts
# 2, r-a drafts 2 and accepts 1, r-c drafts none.
BATCH = ["r-b", "r-a", "r-c"]
DRAFTS = [[1, 2, 3], [4, 5], []]
TARGETS = [[1, 2, 6, 7], [4, 0, 0], [3]]
STEP = decode_step({"r-a": 20, "r-b": 30, "r-c": 40}, {"r-a": [4, 5], "r-b": [1, 2, 3]})


def _verify(sampler=None):
    metadata, logits, sampling = verification_inputs(DRAFTS, TARGETS)
    sampler = sampler or RejectionSampler(Sampler())
    return sampler(metadata, None, logits, sampling)


def _propose(runner=None, output=STEP):
    return spec_decode.propose_draft_token_ids(
        lambda *args: [[9], [9], []], runner or Runner(BATCH), output, [[7], [4, 5], [3]], None,
        None, None, None, None, None, None)


def _detail(span):
    return json.loads(span.attributes[contract.RID_DETAIL])


def test_acceptance_from_the_real_rejection_sampler(capture):
    expected = _verify().sampled_token_ids
    instrumentor = instrument(capture, [spec(
        "vllm.v1.sample.rejection_sampler", "RejectionSampler.forward",
        handler="capture_rejection_output", domain="Execute")])
    try:
        output = _verify()
    finally:
        instrumentor.uninstrument()
    assert torch.equal(output.sampled_token_ids, expected)  # vLLM's result, untouched
    assert output.sampled_token_ids.tolist() == [[1, 2, 6, -1], [4, 0, -1, -1], [3, -1, -1, -1]]
    assert _propose() == [[9], [9], []]
    (span,) = capture.named(spec_decode.RECORD_NAME)
    assert _detail(span) == [
        {"rid": "r-b", "num_computed_tokens": 30, "num_spec_output_tokens": 3,
         "num_spec_accepted_tokens": 2},
        {"rid": "r-a", "num_computed_tokens": 20, "num_spec_output_tokens": 2,
         "num_spec_accepted_tokens": 1}]
    attrs = span.attributes
    assert list(attrs[contract.RID]) == ["r-b", "r-a"]
    assert attrs[contract.METRIC_PREFIX + "num_spec_output_tokens"] == 5
    assert attrs[contract.METRIC_PREFIX + "num_spec_accepted_tokens"] == 3
    assert attrs["accepted_ratio"] == 0.6
    assert tuple(attrs["accepted_ratio_per_pos"]) == (1.0, 0.5, 0.0)
    assert attrs[contract.DOMAIN] == "Execute"


def test_rejection_sample_function_shape(capture):
    # vllm-ascend's symbol file hooks the module function, which returns the token tensor.
    metadata, logits, sampling = verification_inputs(DRAFTS, TARGETS)
    target = logits[metadata.target_logits_indices].to(torch.float32)
    bonus = logits[metadata.bonus_logits_indices].argmax(dim=-1, keepdim=True)
    tokens = spec_decode.capture_rejection_output(
        rejection_sample, None, metadata.draft_token_ids, metadata.num_draft_tokens,
        metadata.max_spec_len, metadata.cu_num_draft_tokens, None, target, bonus, sampling)
    assert tokens.tolist() == [[1, 2, 6, -1], [4, 0, -1, -1], [3, -1, -1, -1]]
    assert spec_decode._step.verification == spec_decode.Verification([2, 1, 0], [3, 2, 0])


def test_scheduler_output_found_in_vllm_ascend_position(capture):
    _verify(sampler=_hooked_sampler())
    # NPUModelRunner.propose_draft_token_ids(valid_sampled_token_ids, sampling_metadata,
    # scheduler_output, ...)
    spec_decode.propose_draft_token_ids(lambda *a: None, Runner(BATCH), [[7]], None, STEP,
                                        None)
    (span,) = capture.named(spec_decode.RECORD_NAME)
    assert [d["num_spec_accepted_tokens"] for d in _detail(span)] == [2, 1]


def _hooked_sampler():
    class Hooked(RejectionSampler):
        def forward(self, *args, **kwargs):
            return spec_decode.capture_rejection_output(super().forward, self, *args, **kwargs)
    return Hooked(Sampler())


def test_without_the_rejection_sampler_acceptance_is_left_out(capture):
    _propose()
    (span,) = capture.named(spec_decode.RECORD_NAME)
    assert _detail(span) == [
        {"rid": "r-a", "num_computed_tokens": 20, "num_spec_output_tokens": 2},
        {"rid": "r-b", "num_computed_tokens": 30, "num_spec_output_tokens": 3}]
    assert span.attributes[contract.METRIC_PREFIX + "num_spec_output_tokens"] == 5
    for key in ("accepted_ratio", "accepted_ratio_per_pos",
                contract.METRIC_PREFIX + "num_spec_accepted_tokens"):
        assert key not in span.attributes


def test_a_verification_of_other_requests_is_not_used(capture):
    _verify(sampler=_hooked_sampler())
    other = decode_step({"r-x": 3, "r-b": 30}, {"r-x": [1], "r-b": [1, 2, 3]})
    _propose(Runner(["r-x", "r-b", "r-c"]), other)  # r-a's row would be r-b's: mismatch
    (span,) = capture.named(spec_decode.RECORD_NAME)
    assert all("num_spec_accepted_tokens" not in d for d in _detail(span))


def test_steps_without_drafts_record_nothing(capture):
    _propose(output=decode_step({"r-a": 5}, {"r-a": []}))
    _propose(output=decode_step({"r-a": 5}, {}))
    assert capture.named(spec_decode.RECORD_NAME) == []


def test_accepted_by_request_on_model_runner_exec_when_sampling_runs_inside(capture):
    sampler = _hooked_sampler()
    runner = Runner(BATCH)

    def execute_model(scheduler_output, intermediate_tensors=None):
        # vLLM before 0.11.1: the runner samples, verifies and drafts inside execute_model.
        _verify(sampler)
        _propose(runner, scheduler_output)
        return "runner output"

    assert model.execute_model_runner(execute_model, runner, STEP) == "runner output"
    (span,) = capture.named("modelRunnerExec")
    assert json.loads(span.attributes["spec_decode_accepted_by_req"]) == {"r-b": 2, "r-a": 1}

    capture.clear()
    # vLLM 0.32: execute_model only runs the model; sample_tokens verifies and drafts later.
    model.execute_model_runner(lambda so: None, runner, STEP)
    _verify(sampler)
    _propose(runner, STEP)
    (span,) = capture.named("modelRunnerExec")
    assert "spec_decode_accepted_by_req" not in span.attributes
    assert capture.named(spec_decode.RECORD_NAME)[0].attributes["accepted_ratio"] == 0.6


def test_a_new_step_drops_the_previous_verification(capture):
    _verify(sampler=_hooked_sampler())
    model.execute_model_runner(lambda so: None, Runner(BATCH), STEP)  # next step begins
    _propose()
    (span,) = capture.named(spec_decode.RECORD_NAME)
    assert "accepted_ratio" not in span.attributes


def test_spec_decoding_message_as_the_exporter_writes_it(capture):
    sampler = _hooked_sampler()
    runner = Runner(BATCH)

    def execute_model(scheduler_output):
        _verify(sampler)
        _propose(runner, scheduler_output)

    model.execute_model_runner(execute_model, runner, STEP)
    spans = {s.name: s for s in capture.spans()}
    records = span_to_records(spans[spec_decode.RECORD_NAME], fallback_tid=1)
    (row,) = records.mstx
    message = json.loads(row.message)
    assert list(message)[:4] == ["domain", "name", "type", "rid"]
    assert message["rid"][0] == {"rid": "r-b", "num_computed_tokens": 30,
                                 "num_spec_output_tokens": 3, "num_spec_accepted_tokens": 2}
    assert message["num_spec_output_tokens="] == 5
    assert message["num_spec_accepted_tokens="] == 3
    assert message["accepted_ratio"] == 0.6
    assert message["accepted_ratio_per_pos"] == [1.0, 0.5, 0.0]
    runner_message = json.loads(span_to_records(spans["modelRunnerExec"], 1).mstx[0].message)
    assert json.loads(runner_message["spec_decode_accepted_by_req"]) == {"r-b": 2, "r-a": 1}
    assert records.rejected_keys == ()


def test_unknown_rejection_output_shapes_are_ignored(capture):
    spec_decode.capture_rejection_output(lambda *a: None, None, None)
    spec_decode.capture_rejection_output(lambda *a: torch.zeros(3), None, None)
    assert spec_decode._step.verification is None
    # Rows that disagree with the drafts the metadata lists: not understood, not kept.
    metadata = SpecDecodeMetadata.make_dummy([[1], [2]], torch.device("cpu"))
    spec_decode.capture_rejection_output(lambda *a: torch.tensor([[1, -1]]), None, metadata)
    assert spec_decode._step.verification is None


@pytest.mark.parametrize("kind", ["db", "otlp"])
def test_spec_decoding_through_the_exporter_and_the_analyzer(tmp_path, kind):
    """Handlers -> recorder -> ms_service SQLite file (or OTLP JSON) -> analyzer: the worker's
    acceptance lands on the EngineCore step that scheduled the drafts."""
    from google.protobuf.json_format import MessageToJson
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from otel_vllm_ascend.analysis.batches import build_batches
    from otel_vllm_ascend.analysis.readers import read_captures
    from otel_vllm_ascend.analysis.spec_decode import build_spec_decode
    from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"host.name": "h1"}))
    provider.add_span_processor(SimpleSpanProcessor(MsServiceSpanExporter(tmp_path / "db",
                                                                          "h1")))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    recorder.set_tracer_provider(provider)
    control.start(config=ProfilerConfig(enable=True))
    common._role_recorded = None
    spec_decode.begin_step()
    try:
        sampler = _hooked_sampler()
        runner = Runner(BATCH)
        for output in (decode_step({"r-a": 18, "r-b": 29, "r-c": 39}, {}), STEP):
            # EngineCore hands the step to the worker; the worker runs, verifies and drafts.
            def worker(so, output=output):
                model.execute_model_runner(lambda s: None, runner, so)
                if so.scheduled_spec_decode_tokens:
                    _verify(sampler)
                    _propose(runner, so)
                return "model output"
            assert model.execute_model(worker, None, output) == "model output"
        recorder.flush()
    finally:
        control.stop()
        recorder.set_tracer_provider(None)
        provider.shutdown()
    otlp = tmp_path / "otlp" / "spans.jsonl"
    otlp.parent.mkdir()
    otlp.write_text(MessageToJson(encode_spans(memory.get_finished_spans()), indent=None))
    frame, _, report = read_captures(tmp_path / kind)
    assert report.problems == [] and len(report.files) == 1
    spec = build_spec_decode(frame)
    assert spec[["rid", "step_id", "spec_tokens", "accepted_tokens"]].values.tolist() == [
        ["r-b", 1, 3, 2], ["r-a", 1, 2, 1]]
    batches = build_batches(frame)
    assert list(batches["accepted_ratio"].fillna(-1)) == [-1, 0.6]
    assert batches["accepted_ratio_per_pos"][1] == "[1.0, 0.5, 0.0]"
