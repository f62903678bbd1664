"""The serving side of the writer process, without starting one: its environment, the switch,
the HELLO, and the entry point named without importing the export side."""

from __future__ import annotations

import os
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel_vllm_ascend import handoff, tracing_setup, writer_client


def test_writer_environment_drops_the_instrumenting_sitecustomize():
    auto = os.path.join("site-packages", "opentelemetry", "instrumentation",
                        "auto_instrumentation")
    env = writer_client.writer_environment({
        "PYTHONPATH": os.pathsep.join([auto, "/somewhere/else"]),
        writer_client.ADDRESS_ENV: "otel-vllm-ascend-1-00",
        "OTEL_TRACES_EXPORTER": "ms_service,otlp"})
    assert env["PYTHONPATH"] == "/somewhere/else"
    assert env["OTEL_VLLM_PROCESS_ROLE"] == writer_client.WRITER_ROLE
    assert writer_client.ADDRESS_ENV not in env  # the writer is nobody's client
    assert env["OTEL_TRACES_EXPORTER"] == "ms_service,otlp"  # the same exporters
    assert "PYTHONPATH" not in writer_client.writer_environment({"PYTHONPATH": auto})


def test_switch(monkeypatch):
    monkeypatch.setenv(writer_client.SWITCH_ENV, "0")
    assert not writer_client.enabled()
    assert writer_client.start(TracerProvider(), "x:main") is None
    monkeypatch.setenv(writer_client.SWITCH_ENV, "1")
    assert writer_client.enabled()


def test_inherited_address_connects_without_starting_a_writer(monkeypatch):
    monkeypatch.setenv(writer_client.ADDRESS_ENV, "otel-vllm-ascend-test-none")
    client = writer_client.start(TracerProvider(), "x:main")
    assert client is not None and client.process is None and client.state == "new"


def test_nobody_listening_means_building_here(monkeypatch, caplog):
    monkeypatch.setenv(writer_client.ADDRESS_ENV, f"otel-vllm-ascend-test-{os.getpid()}-none")
    client = writer_client.start(TracerProvider(), "x:main")
    from collections import deque
    queue = deque([1, 2])
    assert client.send(queue) is False  # the recorder builds them itself
    assert list(queue) == [1, 2] and client.state == "local"
    assert "did not answer" in caplog.text
    child = client.for_fork_child()
    assert child.state == "local" and child is not client


def test_hello_carries_the_resource_and_folder():
    provider = TracerProvider(resource=Resource({"process.pid": 7, "vllm.process.role": "worker",
                                                 "list": ("a", "b")}, "https://schema"))
    hello = writer_client.hello(provider)
    assert hello["format"] == handoff.FORMAT and hello["pid"] == os.getpid()
    assert hello["resource"]["vllm.process.role"] == "worker"
    assert hello["resource"]["list"] == ["a", "b"] and hello["schema_url"] == "https://schema"
    assert hello["folder"]
    handoff.frame(handoff.HELLO, hello)  # marshal takes it


def test_writer_named_by_entry_point_without_importing_it():
    sys.modules.pop("otel_vllm_ascend.exporters.writer", None)
    assert tracing_setup.export_target("writer") == "otel_vllm_ascend.exporters.writer:main"
    assert "otel_vllm_ascend.exporters.writer" not in sys.modules


def test_send_waits_for_a_slow_writer_that_keeps_reading():
    """A writer starved of CPU reads in small bites, slower than the send timeout for the whole
    frame: the frame still goes through whole (``sendall`` would time out mid-frame and the
    writer be taken for gone), and a writer that stops reading still times out."""
    import socket
    import threading
    import time

    import pytest

    producer, writer = socket.socketpair()
    producer.settimeout(0.3)
    data = bytes(range(256)) * 8192  # 2 MiB: far more than the socket buffers hold
    received = bytearray()

    def slow_reader():
        while len(received) < len(data):
            received.extend(writer.recv(128 * 1024))
            time.sleep(0.1)

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    started = time.monotonic()
    writer_client.send_all(producer, data)
    reader.join(30)
    assert time.monotonic() - started > 0.3  # longer than the timeout, in total
    assert bytes(received) == data
    with pytest.raises(socket.timeout):  # no progress at all: still a timeout
        writer_client.send_all(producer, data)
    producer.close()
    writer.close()


def _record(name, attributes):
    """A queued span record as the recorder holds it (a plain tuple would be a task)."""
    from otel_vllm_ascend.records import SpanRecord, new_span_record

    return new_span_record(SpanRecord, (name, 1, 2, attributes, None, None, None, None, 1, None))


def _connected_client():
    import socket

    client = writer_client.WriterClient("otel-vllm-ascend-test-unused", TracerProvider())
    client.sock, peer = socket.socketpair()
    client.state = "connected"
    return client, peer


def test_drops_name_their_cause(monkeypatch, caplog):
    """A record that cannot be encoded is dropped alone (the others still go) and counted as
    such, its exception logged once; records queued after the process closed its connection
    are counted as that, not as a writer that is gone."""
    from collections import deque

    from otel_vllm_ascend import drops
    from otel_vllm_ascend.recorder import Deferred

    monkeypatch.setattr(drops, "_drops", drops._Drops())

    def broken(_arg):
        raise RuntimeError("torn down")

    client, peer = _connected_client()
    try:
        queue = deque([_record("ok", {"a": 1}), _record("bad", {"a": Deferred(broken, None)}),
                       _record("bad", {"a": Deferred(broken, None)}), _record("ok2", {})])
        assert client.send(queue) is True and not queue
        reader = handoff.FrameReader()
        frames = reader.feed(peer.recv(1 << 16))
        sent = [wire[0] for kind, payload in frames for wire in payload]
        assert sent == ["ok", "ok2"]
        assert drops.count(writer_client.NOT_ENCODED) == 2
        assert drops.count(writer_client.WRITER_GONE) == 0
        assert caplog.text.count("could not be handed to the writer (RuntimeError: torn down)") == 1

        client.close()
        assert client.state == "closed"
        assert client.send(deque([_record("late", {})])) is True
        assert drops.count(writer_client.AFTER_CLOSE) == 1
        assert drops.count(writer_client.WRITER_GONE) == 0
    finally:
        peer.close()
