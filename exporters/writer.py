"""The node's writer process: span building, JSON, SQLite and OTLP for every vLLM process.

Started by the first vLLM process of a server (``otel_vllm_ascend.writer_client.start``, with
``python -m otel_vllm_ascend.exporters.writer --fd N --parent PID``) on a listening Unix socket
it inherits; never started by hand. Per connected vLLM process (a *producer*) it keeps:

* a tracer provider with that process's resource (pid, role, host, ``service.name`` and
  whatever ``OTEL_RESOURCE_ATTRIBUTES`` gave it), the sampler and id generator of
  ``OTEL_TRACES_SAMPLER`` / ``OTEL_PYTHON_ID_GENERATOR``, and one export span processor per
  ``OTEL_TRACES_EXPORTER`` name, as the configurator would build them in that process; the
  ``ms_service`` exporter writes that process's own file (``ms_service_<host>-<pid>.db``);
* a :class:`recorder.SpanBuilding` (the same building code the serving processes used to run)
  and a dict of per-process state for the work moved here (engine-step classification, links).

Frames come in as ``handoff.py`` describes; the RECORDS frames of one read are built into
spans at once, in order, and written (the file: one transaction per read, so a writer that fell
behind catches up with fewer commits). A producer that closes its connection,
says BYE or dies has everything it sent built, flushed and its provider shut down; the others go
on. The writer exits when the process that started it is done (its connection closed) or gone
and no producer is connected (or :data:`LINGER_S` after that, whatever is still connected), and
on SIGTERM after writing what it has received. The starting process waits for that at its exit
(``writer_client.EXIT_WAIT_S``), so a capture read after the server stopped is complete.
SIGINT is ignored: Ctrl-C stops the server, whose processes then close their connections.

The writer runs at a low CPU priority (``OTEL_VLLM_WRITER_PRIORITY``, ``priority.py``): on a
busy host it takes the CPU vLLM's processes leave over; it asks for its priority back once the
server has stopped.

With ``OTEL_VLLM_SELF_METER=1`` the writer meters itself too: its building and export CPU,
``steps`` (engine steps built) and ``records``, in a ``selfMeter`` Meta row with role
``writer`` in its own capture file (``ms_service_<host>-<writer pid>.db``), every 2 s and at exit.
"""

from __future__ import annotations

import argparse
import logging
import os
import selectors
import signal
import socket
import struct
import sys
import time
from typing import Any, Dict, List, Optional

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from otel_vllm_ascend import handoff, recorder, selfmeter, tracing_setup
from otel_vllm_ascend.exporters import priority
from otel_vllm_ascend.handlers import common as _common  # noqa: F401 (registers hand-off work)
from otel_vllm_ascend.handlers import model as _model  # noqa: F401
from otel_vllm_ascend.handlers import request as _request  # noqa: F401
from otel_vllm_ascend.handlers import scheduler as _scheduler  # noqa: F401
from otel_vllm_ascend.handlers import spec_decode as _spec_decode  # noqa: F401
from otel_vllm_ascend.record_sink import RecordSink
from otel_vllm_ascend.selfmeter import meter as _meter

# The handler modules above register hand-off work (handoff.register_value /
# register_expander): the writer must know every name a producer sends
# (tests/unit/test_handoff.py checks it against every handler module).

_logger = logging.getLogger("otel_vllm_ascend.writer")

LINGER_S = float(os.environ.get("OTEL_VLLM_WRITER_LINGER_S", "30"))
POLL_S = 0.5
READ_SIZE = 1 << 20
_PEERCRED = struct.Struct("3i")


class Producer:
    """One connected vLLM process: its provider, its span building, its moved state."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = handoff.FrameReader()
        self.pid: Optional[int] = None
        self.provider: Optional[TracerProvider] = None
        self.building: Optional[recorder.SpanBuilding] = None
        self.state: Dict[str, Any] = {}
        self.records = 0
        self.bad = 0

    def start(self, hello: dict) -> None:
        if not isinstance(hello, dict) or hello.get("format") != handoff.FORMAT:
            raise handoff.HandoffError(f"unexpected HELLO {hello!r:.200}")
        self.pid = int(hello["pid"])
        self.provider = provider_for(hello)
        self.building = recorder.SpanBuilding(self.provider)
        self.sock.sendall(b"\x01")

    def build(self, wires: List[tuple]) -> None:
        state = self.state
        records = []
        for wire in wires:
            try:
                decoded = handoff.from_wire(wire, state)
            except Exception:
                self.bad += 1
                if self.bad == 1:
                    _logger.warning("otel-vllm-ascend writer: pid %s sent a record that cannot be "
                                    "decoded; skipping such records", self.pid, exc_info=True)
                continue
            records.extend(decoded)
        self.records += len(records)
        metering = _meter.on
        if metering:
            cpu_start = time.thread_time_ns()
        built = self.building.build(records)
        if metering:
            _meter.drain_ns += time.thread_time_ns() - cpu_start
            _meter.drained += built

    def finish(self) -> None:
        """Everything received is built: flush and shut this process's exporters down."""
        if self.provider is not None:
            try:
                self.provider.force_flush()
                self.provider.shutdown()
            except Exception:
                _logger.debug("shutting pid %s's exporters down failed", self.pid, exc_info=True)
            self.provider = None
        try:
            self.sock.close()
        except OSError:
            pass


def provider_for(hello: dict) -> TracerProvider:
    """A provider as the configurator would have built it in the producer process."""
    from opentelemetry.sdk import _configuration as config

    resource = Resource(dict(hello.get("resource") or {}), hello.get("schema_url") or None)
    sampler = id_generator = None
    try:
        sampler = config._import_sampler(config._get_sampler())
        id_generator = config._import_id_generator(config._get_id_generator())
    except Exception:  # the SDK's defaults (the same env variables) then
        _logger.debug("sampler / id generator from the environment", exc_info=True)
    kwargs: Dict[str, Any] = {"resource": resource, "sampler": sampler}
    if id_generator is not None:
        kwargs["id_generator"] = id_generator
    provider = TracerProvider(**kwargs)
    processor = tracing_setup.export_part("span_processor")
    exporters = config._import_exporters(config._get_exporter_names("traces"), [], [])[0]
    for exporter_class in exporters.values():
        if isinstance(exporter_class, type) and issubclass(exporter_class, RecordSink):
            exporter = exporter_class(folder=hello.get("folder") or None, pid=hello["pid"],
                                      ppid=hello.get("ppid"))
        else:
            exporter = exporter_class()
        provider.add_span_processor(processor(exporter))
    return provider


def own_provider() -> TracerProvider:
    """The writer's own provider: its ``selfMeter`` rows, in its own capture file."""
    return provider_for({"pid": os.getpid(), "ppid": os.getppid(),
                         "resource": Resource.create(tracing_setup.resource_attributes())
                         .attributes})


class Writer:
    def __init__(self, listener: socket.socket, parent: int,
                 lowered: Optional[priority.Applied] = None) -> None:
        self.listener = listener
        self.parent = parent
        self.lowered = lowered  # the priority to give back once the server has stopped
        self.parent_gone_at: Optional[float] = None
        self.selector = selectors.DefaultSelector()
        self.producers: Dict[int, Producer] = {}
        self.stopping = False
        listener.setblocking(False)
        self.selector.register(listener, selectors.EVENT_READ, None)

    def run(self) -> None:
        while True:
            for key, _ in self.selector.select(POLL_S):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.data)
            if _meter.on and selfmeter.due():
                recorder.record_self_meter_report(False)
            if self.lowered is not None and (self.stopping or self.parent_gone_at is not None):
                priority.restore(self.lowered)  # vLLM is done: finish without waiting for idle CPU
                self.lowered = None
            if self.stopping:
                self._read_what_is_there()
                break
            if self.parent_gone_at is None and os.getppid() != self.parent:
                self.parent_gone_at = time.monotonic()
            if self.parent_gone_at is not None and (
                    not self.producers or time.monotonic() - self.parent_gone_at > LINGER_S):
                break
        for producer in list(self.producers.values()):
            self._close(producer)

    def _accept(self) -> None:
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            uid = _PEERCRED.unpack(creds)[1]
        except (OSError, AttributeError):
            uid = os.getuid()
        if uid != os.getuid():
            _logger.warning("otel-vllm-ascend writer: refused a connection of uid %d", uid)
            sock.close()
            return
        sock.setblocking(True)
        sock.settimeout(5.0)  # the answer to HELLO only
        producer = Producer(sock)
        self.producers[sock.fileno()] = producer
        self.selector.register(sock, selectors.EVENT_READ, producer)

    def _read(self, producer: Producer) -> bool:
        """One read of the producer's socket; False when it is done."""
        try:
            data = producer.sock.recv(READ_SIZE)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._close(producer)
            return False
        # The RECORDS frames of one read are built together: one transaction in the file
        # instead of one per frame. A writer that keeps up reads one frame at a time; one
        # behind (it runs at a low priority) catches up with fewer, larger commits
        # (benchmarks/bench_writer_sqlite.py: 4 frames per commit, 0.6-0.8 of the CPU per row).
        pending: List[tuple] = []
        try:
            for kind, payload in producer.reader.feed(data):
                if kind == handoff.RECORDS and producer.building is not None:
                    pending.extend(payload)
                    continue
                self._build(producer, pending)
                if kind == handoff.HELLO and producer.building is None:
                    producer.start(payload)
                elif kind == handoff.BYE:
                    self._close(producer)
                    return False
                else:
                    raise handoff.HandoffError(f"unexpected frame kind {kind}")
            self._build(producer, pending)
        except Exception as exc:
            _logger.warning("otel-vllm-ascend writer: closing the connection of pid %s (%s: %s)",
                            producer.pid, type(exc).__name__, exc)
            try:
                self._build(producer, pending)  # the frames read before the broken one
            except Exception:
                _logger.debug("building pid %s's last frames failed", producer.pid,
                              exc_info=True)
            self._close(producer)
            return False
        return True

    @staticmethod
    def _build(producer: Producer, pending: List[tuple]) -> None:
        """Build and empty ``pending`` (emptied first: a failure never builds it twice)."""
        if pending:
            wires = pending[:]
            pending.clear()
            producer.build(wires)

    def _read_what_is_there(self) -> None:
        """At SIGTERM: everything already in the sockets, without waiting for more."""
        for producer in list(self.producers.values()):
            producer.sock.setblocking(False)
            while producer.sock.fileno() in self.producers and self._read(producer):
                try:
                    if not producer.sock.recv(1, socket.MSG_PEEK):
                        self._close(producer)
                        break
                except BlockingIOError:
                    break
                except OSError:
                    self._close(producer)
                    break

    def _close(self, producer: Producer) -> None:
        if producer.pid == self.parent and self.parent_gone_at is None:
            self.parent_gone_at = time.monotonic()  # the server's first process is done
        fd = producer.sock.fileno()
        if fd in self.producers:
            del self.producers[fd]
            try:
                self.selector.unregister(producer.sock)
            except (KeyError, ValueError):
                pass
        producer.finish()


def _stop(writer: Writer) -> Any:
    def handler(signum: int, frame: Any) -> None:
        writer.stopping = True
    return handler


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="otel_vllm_ascend.exporters.writer",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--fd", type=int, required=True, help="the listening socket's fd")
    parser.add_argument("--parent", type=int, required=True, help="the starting process's pid")
    args = parser.parse_args(argv)
    if not logging.getLogger("otel_vllm_ascend").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logging.getLogger("otel_vllm_ascend").addHandler(handler)
        logging.getLogger("otel_vllm_ascend").setLevel(
            os.environ.get("OTEL_VLLM_LOG_LEVEL", "INFO").upper())
        logging.getLogger("otel_vllm_ascend").propagate = False
    lowered = priority.lower()  # before any thread starts: they inherit it
    listener = socket.socket(fileno=args.fd)
    writer = Writer(listener, args.parent, lowered)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A background process group of the terminal's session: with ``stty tostop`` a write to
    # the terminal would stop it; ignored, the write goes through.
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop(writer))
    provider = own_provider()
    recorder.set_tracer_provider(provider)
    try:
        writer.run()
    finally:
        listener.close()
        recorder.flush_at_exit()
        provider.force_flush()
        provider.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
