"""Real OTLP receivers on loopback for tests: HTTP/protobuf and gRPC.

HTTP uses opentelemetry-test-utils' ``OtlpProtoTestServer`` (a private module of that package:
the version is pinned by the project's test environment). gRPC is a small server on
opentelemetry-proto's generated ``TraceServiceServicer``.
"""

from __future__ import annotations

import threading
import time
from concurrent import futures
from dataclasses import dataclass

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.test._otlp_test_server import OtlpProtoTestServer


@dataclass
class ReceivedSpan:
    name: str
    attributes: dict
    resource: dict
    scope: str


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def _attrs(key_values) -> dict:
    return {kv.key: _value(kv.value) for kv in key_values}


class HttpReceiver:
    protocol = "http/protobuf"

    def __init__(self) -> None:
        self._server = OtlpProtoTestServer().start()
        self.endpoint = f"http://127.0.0.1:{self._server.port}"  # the SDK appends /v1/traces
        self._seen: list = []

    def spans(self) -> list:
        for recorded in self._server.drain_spans():
            self._seen.append(ReceivedSpan(recorded.span.name, _attrs(recorded.span.attributes),
                                           _attrs(recorded.resource.attributes),
                                           recorded.scope.name))
        return list(self._seen)

    def stop(self) -> None:
        self._server.stop()


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.received: list = []

    def Export(self, request, context):  # noqa: N802 (generated interface name)
        found = []
        for resource_spans in request.resource_spans:
            resource = _attrs(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(ReceivedSpan(span.name, _attrs(span.attributes), resource,
                                              scope_spans.scope.name))
        with self.lock:
            self.received.extend(found)
        return trace_service_pb2.ExportTraceServiceResponse()


class GrpcReceiver:
    protocol = "grpc"

    def __init__(self) -> None:
        self._service = _TraceService()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self._service, self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.endpoint = f"http://127.0.0.1:{port}"

    def spans(self) -> list:
        with self._service.lock:
            return list(self._service.received)

    def stop(self) -> None:
        self._server.stop(grace=None)


def wait_for(receiver, predicate, timeout: float = 20.0) -> list:
    """Spans received so far once ``predicate(spans)`` holds (or at the timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = receiver.spans()
        if predicate(spans) or time.monotonic() > deadline:
            return spans
        time.sleep(0.1)
