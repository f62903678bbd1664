"""A minimal OTLP/HTTP (protobuf) trace receiver on loopback, for tests and benchmarks.

Accepts ``POST /v1/traces`` bodies (optionally gzip/deflate encoded) and keeps them; on
:meth:`OtlpReceiver.spans` they are decoded with ``opentelemetry-proto`` into every span with its
resource attributes and the time it arrived. Run it in-process (tests)::

    with OtlpReceiver() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ...
        spans = receiver.spans()

or as its own process, like a real collector, so that receiving costs nothing in the process
that times a workload (benchmarks)::

    with ReceiverProcess() as receiver:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = receiver.endpoint
        ...
    receiver.span_count  # after the with block
"""

from __future__ import annotations

import dataclasses
import gzip
import subprocess
import sys
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Optional

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclasses.dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict
    resource: dict
    link_trace_ids: list
    received_at: float


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind is None:
        return None
    return getattr(any_value, kind)


def _attributes(pairs: Any) -> dict:
    return {pair.key: _value(pair.value) for pair in pairs}


class OtlpReceiver:
    """OTLP/HTTP receiver on 127.0.0.1 (ephemeral port unless given)."""

    def __init__(self, port: int = 0) -> None:
        self._spans: list = []
        self._bodies: list = []
        self._lock = threading.Lock()
        self.requests = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path.split("?")[0] != "/v1/traces":
                    self.send_error(404)
                    return
                receiver._add(body)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        """Value for ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter appends ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    def _add(self, body: bytes) -> None:
        # Kept as bytes and decoded when asked for: decoding every span as it arrives would
        # put a collector's work into the process that times the workload (benchmarks).
        with self._lock:
            self._bodies.append((body, time.time()))
            self.requests += 1

    def _decode(self, body: bytes, received_at: float) -> list:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        batch = []
        for resource_spans in request.resource_spans:
            resource = _attributes(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    batch.append(ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        link_trace_ids=[link.trace_id.hex() for link in span.links],
                        received_at=received_at,
                    ))
        return batch

    def spans(self) -> list:
        with self._lock:
            pending, self._bodies = self._bodies, []
            for body, received_at in pending:
                self._spans.extend(self._decode(body, received_at))
            return list(self._spans)

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="otlp-receiver")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class ReceiverProcess:
    """:class:`OtlpReceiver` in a child process; :attr:`span_count` once stopped."""

    def __init__(self) -> None:
        self.span_count: Optional[int] = None
        self._process: Optional[subprocess.Popen] = None
        self.endpoint = ""

    def __enter__(self) -> ReceiverProcess:
        self._process = subprocess.Popen(
            [sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline().split()  # "listening <endpoint>"
        if len(line) != 2 or line[0] != "listening":
            self._process.kill()
            raise RuntimeError(f"OTLP receiver process did not start: {line}")
        self.endpoint = line[1]
        return self

    def __exit__(self, *exc: object) -> None:
        process = self._process
        if process is None:
            return
        out, _ = process.communicate(input="", timeout=600)  # EOF on stdin: stop and count
        counts = [line.split()[1] for line in out.splitlines() if line.startswith("spans ")]
        self.span_count = int(counts[-1]) if counts else None


def main() -> None:
    """Serve until stdin closes, then print ``spans <count>``."""
    with OtlpReceiver() as receiver:
        print(f"listening {receiver.endpoint}", flush=True)
        sys.stdin.read()
    print(f"spans {len(receiver.spans())}", flush=True)


if __name__ == "__main__":
    main()
