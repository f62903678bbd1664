"""Distro defaults, resource attributes and the plain-path provider set-up."""

import os
import socket
import subprocess
import sys
import textwrap

import pytest

from otel_vllm_ascend import tracing_setup
from otel_vllm_ascend.distro import VllmAscendConfigurator, VllmAscendDistro


def test_defaults_only_where_the_user_has_not_set_them():
    env = {}
    tracing_setup.apply_env_defaults(env)
    assert env == {
        "OTEL_TRACES_EXPORTER": "ms_service", "OTEL_METRICS_EXPORTER": "none",
        "OTEL_LOGS_EXPORTER": "none", "OTEL_SERVICE_NAME": "vllm",
        "OTEL_BSP_SCHEDULE_DELAY": "500", "OTEL_BSP_MAX_QUEUE_SIZE": "65536",
    }
    user = {"OTEL_TRACES_EXPORTER": "console", "OTEL_BSP_MAX_QUEUE_SIZE": "10",
            "OTEL_RESOURCE_ATTRIBUTES": "service.name=mine", "OTEL_METRICS_EXPORTER": "otlp"}
    env = dict(user)
    tracing_setup.apply_env_defaults(env)
    assert {k: env[k] for k in user} == user
    assert "OTEL_SERVICE_NAME" not in env  # would override the user's service.name


@pytest.mark.parametrize("name", tracing_setup.ENDPOINT_ENVS)
def test_otlp_added_when_an_endpoint_is_set(name):
    env = {name: "http://127.0.0.1:4317"}
    tracing_setup.apply_env_defaults(env)
    assert env["OTEL_TRACES_EXPORTER"] == "ms_service,otlp"


def test_resource_attributes_and_role_override(monkeypatch):
    monkeypatch.delenv(tracing_setup.ROLE_ENV, raising=False)
    attrs = tracing_setup.resource_attributes()
    assert attrs["process.pid"] == os.getpid() and attrs["host.name"] == socket.gethostname()
    assert "vllm.process.role" not in attrs  # pytest is not a vLLM process
    monkeypatch.setenv(tracing_setup.ROLE_ENV, "worker")
    assert tracing_setup.resource_attributes()["vllm.process.role"] == "worker"


def test_role_from_multiprocessing_process_name(monkeypatch):
    import multiprocessing

    monkeypatch.delenv(tracing_setup.ROLE_ENV, raising=False)
    process = multiprocessing.current_process()
    original = process.name
    try:
        for name, role in [("EngineCore_DP0", "engine_core"), ("EngineCore", "engine_core"),
                           ("VllmWorker-0", "worker")]:
            process.name = name
            assert tracing_setup.detect_process_role() == role
    finally:
        process.name = original


def test_role_of_the_vllm_cli_main_process(monkeypatch):
    monkeypatch.delenv(tracing_setup.ROLE_ENV, raising=False)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/vllm", "serve", "model"])
    assert tracing_setup.detect_process_role() == "api_server"


def test_entry_points_point_at_our_classes():
    from importlib.metadata import entry_points

    def load(group, name):
        return [ep for ep in entry_points(group=group) if ep.name == name][0].load()

    from otel_vllm_ascend.exporters.ms_service import MsServiceSpanExporter

    assert load("opentelemetry_traces_exporter", "ms_service") is MsServiceSpanExporter
    assert load("opentelemetry_distro", "otel_vllm_ascend") is VllmAscendDistro
    assert load("opentelemetry_configurator", "otel_vllm_ascend") is VllmAscendConfigurator


SETUP_TWICE = """
import json, os
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from otel_vllm_ascend.tracing_setup import ensure_tracer_provider
mode = os.environ["CASE"]
if mode == "foreign":
    theirs = TracerProvider()
    trace.set_tracer_provider(theirs)
first = ensure_tracer_provider()
second = ensure_tracer_provider()
names = [type(p).__name__ + ":" + type(getattr(p, "span_exporter", None)).__name__
         for p in first._active_span_processor._span_processors]
print(json.dumps({"same": first is second, "processors": names,
                  "global": trace.get_tracer_provider() is first,
                  "foreign_kept": mode != "foreign" or first is theirs,
                  "resource": dict(first.resource.attributes)}))
"""


@pytest.mark.parametrize("case", ["fresh", "foreign"])
def test_ensure_tracer_provider_is_idempotent(tmp_path, case):
    import json

    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(CASE=case, OTEL_VLLM_SESSION_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(SETUP_TWICE)], env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    result = json.loads(done.stdout)
    assert result["same"] and result["global"] and result["foreign_kept"]
    files = [p for p in result["processors"] if p.endswith("MsServiceSpanExporter")]
    assert files == ["CountingBatchSpanProcessor:MsServiceSpanExporter"]  # added exactly once
    assert "ThreadIdSpanProcessor:NoneType" in result["processors"]
    if case == "fresh":
        assert result["resource"]["service.name"] == "vllm"
        assert result["resource"]["host.name"] == socket.gethostname()
