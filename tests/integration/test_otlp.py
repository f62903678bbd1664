"""OTLP forwarding to real receivers on loopback (http/protobuf and gRPC), next to the file.

Each case runs a fresh Python process that sets up tracing as the plain ``vllm serve`` path does
(:func:`otel_vllm_ascend.tracing_setup.ensure_tracer_provider`), emits records through the
recorder and exits normally; the receiver and the capture file are then checked.
"""

import json
import os
import socket
import sqlite3
import subprocess
import sys

import pytest
from otlp_receivers import GrpcReceiver, HttpReceiver, wait_for

from otel_vllm_ascend.exporters.ms_service import db_file_name

pytestmark = pytest.mark.subprocess

RECORDS = """
import os, time
from otel_vllm_ascend import contract, recorder
t = time.time_ns()
recorder.record_span("modelExec", t, t + 5000, {contract.DOMAIN: "Execute",
                     contract.RID: ["a", "b"], "batch_size": 2, "pid_of_writer": os.getpid()},
                     events=[("Enqueue", t + 10, {contract.RID: "a"})])
recorder.record_event("httpReq", {contract.DOMAIN: "Engine", contract.RID: "a",
                      "gen_ai.request.id": "a"})
recorder.record_link("cmpl-x-0", "cmpl-x-0-beef")
print(os.getpid(), flush=True)
"""

PLAIN_PATH = """
from otel_vllm_ascend.tracing_setup import ensure_tracer_provider
ensure_tracer_provider()
""" + RECORDS

# Which encoder the OTLP exporter of the process used (the direct one unless switched off).
ENCODER = """
from opentelemetry import trace
from otel_vllm_ascend.exporters import otlp_encoding
exporters = [p.span_exporter for p in trace.get_tracer_provider()._active_span_processor
             ._span_processors if hasattr(p, "span_exporter")]
direct = [getattr(e, "_translate_data", None) is otlp_encoding._grpc_translate
          or getattr(__import__(type(e).__module__, fromlist=["x"]), "encode_spans", None)
          is otlp_encoding._http_encode_spans for e in exporters if "otlp" in type(e).__module__]
print("direct-encoder" if direct == [True] else f"sdk-encoder {direct}", flush=True)
"""


def _clean_env(tmp_path, **extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.pop("SERVICE_PROF_CONFIG_PATH", None)
    env["OTEL_VLLM_SESSION_DIR"] = str(tmp_path / "session")
    env.update(extra)
    return env


def _run(code, env):
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    return done


def _mstx_names(tmp_path, pid):
    path = tmp_path / "session" / db_file_name(socket.gethostname(), pid)
    conn = sqlite3.connect(path)
    try:
        messages = [json.loads(m) for (m,) in conn.execute("SELECT message FROM Mstx "
                                                            "ORDER BY markId")]
    finally:
        conn.close()
    return [m.get("name", "link" if m.get("type") == 3 else None) for m in messages]


@pytest.fixture(params=[HttpReceiver, GrpcReceiver], ids=["http-protobuf", "grpc"])
def receiver(request):
    server = request.param()
    yield server
    server.stop()


@pytest.mark.parametrize("exporters", [None, "ms_service,otlp"],
                         ids=["default-with-endpoint", "explicit-list"])
def test_spans_reach_the_receiver_and_the_file(tmp_path, receiver, exporters):
    env = _clean_env(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                     OTEL_EXPORTER_OTLP_PROTOCOL=receiver.protocol)
    if exporters:
        env["OTEL_TRACES_EXPORTER"] = exporters
    else:
        env["OTEL_VLLM_FAST_OTLP"] = "0"  # the SDK's own encoder must reach the same result
    out = _run(PLAIN_PATH + ENCODER, env).stdout.split()
    pid = int(out[0])
    assert out[1] == ("direct-encoder" if exporters else "sdk-encoder"), out

    spans = wait_for(receiver, lambda s: len(s) >= 3)
    by_name = {s.name: s for s in spans}
    assert sorted(by_name) == ["httpReq", "link", "modelExec"] and len(spans) == 3
    model = by_name["modelExec"]
    assert model.attributes["ms.domain"] == "Execute"
    assert model.attributes["ms.rid"] == ["a", "b"]
    assert isinstance(model.attributes["thread.id"], int)
    assert model.resource["service.name"] == "vllm"
    assert model.resource["process.pid"] == pid
    assert model.resource["host.name"] == socket.gethostname()
    assert by_name["httpReq"].attributes["gen_ai.request.id"] == "a"
    assert by_name["link"].attributes["ms.link.to"] == "cmpl-x-0-beef"

    assert _mstx_names(tmp_path, pid) == ["Enqueue", "modelExec", "httpReq", "link"]


def test_otlp_only_when_the_user_replaces_the_file_exporter(tmp_path, receiver):
    env = _clean_env(tmp_path, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                     OTEL_EXPORTER_OTLP_PROTOCOL=receiver.protocol, OTEL_TRACES_EXPORTER="otlp")
    _run(PLAIN_PATH, env)
    assert len(wait_for(receiver, lambda s: len(s) >= 3)) == 3
    assert not (tmp_path / "session").exists()


def test_file_only_without_an_endpoint(tmp_path):
    pid = int(_run(PLAIN_PATH, _clean_env(tmp_path)).stdout.split()[0])
    assert _mstx_names(tmp_path, pid) == ["Enqueue", "modelExec", "httpReq", "link"]


VLLM_TRACING = """
import os, sys
from vllm.tracing.otel import init_otel_tracer
from otel_vllm_ascend.tracing_setup import ensure_tracer_provider
order = sys.argv[1]
if order == "ours-first":
    ensure_tracer_provider()
tracer = init_otel_tracer("vllm.llm_engine", os.environ["VLLM_TEST_ENDPOINT"])
if order == "vllm-first":
    ensure_tracer_provider()
with tracer.start_as_current_span("llm_request") as span:
    span.set_attribute("gen_ai.request.id", "a")
""" + RECORDS


@pytest.mark.vllm
@pytest.mark.parametrize("order", ["ours-first", "vllm-first"])
def test_coexists_with_vllm_own_tracing(tmp_path, order):
    """vLLM's --otlp-traces-endpoint set-up in the same process: no crash, no duplicates,
    vLLM's spans stay out of the capture file."""
    receiver = GrpcReceiver()  # vLLM's default OTLP protocol
    try:
        env = _clean_env(tmp_path, VLLM_TEST_ENDPOINT=receiver.endpoint)
        done = subprocess.run([sys.executable, "-c", VLLM_TRACING, order], env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        pid = int(done.stdout.split()[-1])
        spans = wait_for(receiver, lambda s: any(x.name == "llm_request" for x in s))
        names = [s.name for s in spans]
        assert names.count("llm_request") == 1
        if order == "vllm-first":
            # our file exporter joined vLLM's provider: our spans also go to vLLM's endpoint, once
            spans = wait_for(receiver, lambda s: len(s) >= 4)
            assert sorted(s.name for s in spans) == ["httpReq", "link", "llm_request", "modelExec"]
        else:
            assert names == ["llm_request"]
        assert _mstx_names(tmp_path, pid) == ["Enqueue", "modelExec", "httpReq", "link"]
    finally:
        receiver.stop()
