"""The serving processes' side of the node's writer process.

With collection on and the provider built from ``OTEL_*`` by this package (the distro, the
configurator or the vLLM plugin), the first vLLM process of a server (the API server, or
whatever process ran ``vllm serve``) starts one writer process and publishes its address in
``OTEL_VLLM_WRITER_ADDRESS``; the processes vLLM starts later (EngineCore, Workers) inherit it
and connect to the same writer. A second server on the same host starts its own writer under
another address, so two servers never mix.

* Address: an abstract Unix socket (Linux; no file) named after the starting process's pid and
  16 random hex digits. The starting process binds and listens before the writer exists and
  hands the listening socket to it, so a producer can always connect; the writer accepts only
  peers of its own user.
* Each producer sends HELLO (its pid, resource attributes, capture folder) and waits for the
  writer's one-byte answer; then, every recorder drain, one RECORDS frame (``handoff.py``) on a
  blocking socket from the recorder's thread (never from vLLM's), with a timeout.
* Writer not answering at start (it could not start, or ``OTEL_VLLM_WRITER=0``): the process
  builds its spans itself as before, said once in a WARNING. Writer gone later: the process
  keeps serving, says once that records are being dropped, and counts them (``drops.py``).
* At exit (``atexit``, a forked child's finaliser) the recorder sends what is queued and a BYE.

The writer itself is ``otel_vllm_ascend.exporters.writer`` (export side), started with
``python -m`` by the name the entry point ``otel_vllm_ascend.export:writer`` gives: collection
does not import it.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Optional

from otel_vllm_ascend import drops, handoff, selfmeter, session
from otel_vllm_ascend.recorder import Deferred
from otel_vllm_ascend.selfmeter import meter as _meter

_logger = logging.getLogger(__name__)

ADDRESS_ENV = "OTEL_VLLM_WRITER_ADDRESS"
SWITCH_ENV = "OTEL_VLLM_WRITER"  # "0": build spans in every serving process, as before
ANSWER_TIMEOUT_S = float(os.environ.get("OTEL_VLLM_WRITER_START_TIMEOUT_S", "20"))
# A send gives up (the writer is taken for gone) after this long without the writer taking a
# single byte: a writer that is only slow (it runs at a low priority, docs/runtime.md) keeps
# taking some, and a frame then waits as long as that takes, on the recorder's thread.
SEND_TIMEOUT_S = 10.0
# The process that started the writer waits this long at exit for it to finish writing, so
# whoever reads the capture after the server stopped reads it whole.
EXIT_WAIT_S = float(os.environ.get("OTEL_VLLM_WRITER_EXIT_WAIT_S", "30"))
WRITER_GONE = "the writer process (gone)"
# Two other reasons a record never reaches the writer, told apart so an exit's drop message
# names its cause: queued after this process closed its connection (a thread still recording
# at exit), or one that could not be turned into plain values (the first is logged).
AFTER_CLOSE = "the writer process (queued after this process closed its connection)"
NOT_ENCODED = "the hand-off (records that could not be encoded; the first is logged)"
WRITER_ROLE = "writer"
_AUTO_INSTRUMENTATION = os.path.join("opentelemetry", "instrumentation", "auto_instrumentation")


def enabled() -> bool:
    return os.environ.get(SWITCH_ENV, "1").strip().lower() not in ("0", "false", "off", "no")


def _connect(address: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(ANSWER_TIMEOUT_S)
        sock.connect("\0" + address)
    except OSError:
        sock.close()
        raise
    return sock


class WriterClient:
    """One serving process's connection to the writer (used from the recorder's thread)."""

    def __init__(self, address: str, provider: Any,
                 process: Optional[subprocess.Popen] = None) -> None:
        self.address = address
        self.provider = provider
        self.process = process  # the writer, in the process that started it
        self.sock: Optional[socket.socket] = None
        self.state = "new"  # new -> connected -> (gone | closed); new -> local
        self.lock = threading.Lock()

    # -- what the recorder calls --------------------------------------------------------------

    def send(self, queue: Any) -> bool:
        """Hand the queued records to the writer; False: build them in this process."""
        with self.lock:
            if self.state == "new":
                self._open()
            if self.state == "local":
                return False
            popleft = queue.popleft
            wires = []
            dropped = 0
            unencoded = 0
            metering = _meter.on
            deferred = Deferred
            by_function = handoff.wire_functions
            while queue:  # only this thread takes from it (under the recorder's lock)
                rec = popleft()
                if self.state != "connected":
                    dropped += 1
                    continue
                try:
                    # A registered task, the common record, without handoff.to_wire's frame.
                    entry = by_function.get(rec[0]) if rec.__class__ is tuple else None
                    if entry is not None:
                        convert = entry.to_wire
                        wire = ("", entry.name, rec[1] if convert is None else convert(rec[1]))
                    else:
                        wire = handoff.to_wire(rec, deferred)
                except Exception as exc:
                    unencoded += 1
                    if drops.count(NOT_ENCODED) + unencoded == 1:
                        _logger.warning("otel-vllm-ascend: pid %d: a record could not be handed "
                                        "to the writer (%s: %s); such records are dropped and "
                                        "counted", os.getpid(), type(exc).__name__, exc,
                                        exc_info=_logger.isEnabledFor(logging.DEBUG))
                    continue
                if wire is None:
                    continue
                if metering:
                    if len(wire) > 3:
                        if wire[0] == selfmeter.REQUEST_RECORD:
                            _meter.requests += 1
                    elif wire[1] == selfmeter.STEP_TASK and wire[2][2] is not None:
                        _meter.steps += 1  # a step's batchFrameworkProcessing (not only its inputs)
                    elif wire[1] == selfmeter.REQUEST_TASK:
                        _meter.requests += 1  # a request's httpReq (with its tokenize)
                wires.append(wire)
            if wires:
                try:
                    send_all(self.sock, handoff.records_frame(wires))
                except OSError as exc:
                    self._gone(exc)
                    dropped += len(wires)
            if dropped:
                drops.add(AFTER_CLOSE if self.state == "closed" else WRITER_GONE, dropped)
            if unencoded:
                drops.add(NOT_ENCODED, unencoded)
            return True

    def close(self) -> None:
        """The producer is done: BYE, then the connection closes; the writer finishes what it
        received. The process that started the writer then waits (up to
        :data:`EXIT_WAIT_S`) for the writer to exit: it exits once that process and every other
        producer are done, so the capture is complete when the server has stopped."""
        with self.lock:
            if self.state == "new" and self.process is not None:
                self._open()  # nothing sent yet: the writer must still hear that we are done
            if self.state == "connected" and self.sock is not None:
                try:
                    send_all(self.sock, handoff.frame(handoff.BYE, None))
                except OSError:
                    pass
            if self.sock is not None:
                self.sock.close()
                self.sock = None
            if self.state in ("new", "connected"):
                self.state = "closed"
            process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                process.wait(EXIT_WAIT_S)
            except subprocess.TimeoutExpired:
                _logger.warning("otel-vllm-ascend: the writer process %d is still writing after "
                                "%.0f s; not waiting longer", process.pid, EXIT_WAIT_S)

    def for_fork_child(self) -> WriterClient:
        """A forked child's own client: same writer, its own connection and HELLO."""
        if self.sock is not None:
            try:
                self.sock.close()  # the child's copy only; the parent's connection stays open
            except OSError:
                pass
        client = WriterClient(self.address, self.provider)
        if self.state == "local":
            client.state = "local"
        return client

    # -- connection ---------------------------------------------------------------------------

    def _open(self) -> None:
        try:
            sock = _connect(self.address)
            sock.sendall(handoff.frame(handoff.HELLO, hello(self.provider)))
            answer = sock.recv(1)
            if answer != b"\x01":
                sock.close()
                raise ConnectionError("the writer closed the connection without answering")
            sock.settimeout(SEND_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            self.state = "local"
            _logger.warning("otel-vllm-ascend: pid %d: the writer process did not answer (%s: "
                            "%s); this process builds and exports its spans itself",
                            os.getpid(), type(exc).__name__, exc)
            return
        self.sock = sock
        self.state = "connected"

    def _gone(self, exc: BaseException) -> None:
        self.state = "gone"
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        _logger.warning("otel-vllm-ascend: pid %d: the writer process is gone (%s: %s); "
                        "serving goes on, this process's records are dropped from now on "
                        "(the count is logged at exit)", os.getpid(), type(exc).__name__, exc)


def send_all(sock: socket.socket, data: bytes) -> None:
    """``sock.sendall`` with the socket's timeout counted from the writer's last progress,
    not from the start: ``sendall``'s timeout bounds the whole frame, so a writer busy or
    starved of CPU for a while would be taken for gone and every later record dropped."""
    view = memoryview(data)
    while view:
        sent = sock.send(view)  # waits up to the socket's timeout for room, then takes what fits
        view = view[sent:]


def hello(provider: Any) -> dict:
    """What the writer needs to build this process's spans as it would: pid, resource, folder."""
    resource = getattr(provider, "resource", None)
    attributes = {}
    schema_url = ""
    if resource is not None:
        schema_url = resource.schema_url or ""
        for key, value in resource.attributes.items():
            attributes[key] = list(value) if isinstance(value, tuple) else value
    return {"format": handoff.FORMAT, "pid": os.getpid(), "ppid": os.getppid(),
            "resource": attributes, "schema_url": schema_url,
            "folder": str(session.session_dir())}


def writer_environment(environ: Optional[dict] = None) -> dict:
    """The writer's environment: the server's, without ``opentelemetry-instrument``'s
    ``sitecustomize`` (the writer is not a process to instrument), with the writer's role."""
    env = dict(os.environ if environ is None else environ)
    path = [entry for entry in env.get("PYTHONPATH", "").split(os.pathsep)
            if entry and _AUTO_INSTRUMENTATION not in entry]
    if path:
        env["PYTHONPATH"] = os.pathsep.join(path)
    else:
        env.pop("PYTHONPATH", None)
    env["OTEL_VLLM_PROCESS_ROLE"] = WRITER_ROLE
    env.pop(ADDRESS_ENV, None)
    return env


# The writer gets a process group of its own, so a signal to the server's group (Ctrl-C, a
# supervisor's SIGTERM to the group) does not cut the writing, but stays in the server's
# session: with the kernel's autogroup a session is a scheduling group, and a writer leading
# a session of its own left other sessions' processes waiting for a CPU (docs/benchmarks.md,
# issue 17, ninth part) while its niceness weighed nothing against the server's.
_OWN_PROCESS_GROUP = ({"process_group": 0} if sys.version_info >= (3, 11)  # POSIX only
                      else {"preexec_fn": getattr(os, "setpgrp", None)})  # a bare system call


def start(provider: Any, writer_target: str) -> Optional[WriterClient]:
    """The client of this server's writer: connect to the inherited one, or start one.

    ``writer_target`` is the entry point's ``module:function``. None when the writer is
    switched off or cannot be started (one WARNING): records are then built here.
    """
    if not enabled():
        return None
    address = os.environ.get(ADDRESS_ENV)
    if address:
        return WriterClient(address, provider)
    address = f"otel-vllm-ascend-{os.getpid()}-{secrets.token_hex(8)}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind("\0" + address)
        listener.listen(128)
        module = writer_target.partition(":")[0]
        process = subprocess.Popen(
            [sys.executable, "-m", module, "--fd", str(listener.fileno()),
             "--parent", str(os.getpid())],
            env=writer_environment(), stdin=subprocess.DEVNULL, pass_fds=(listener.fileno(),),
            **_OWN_PROCESS_GROUP)
    except (OSError, ValueError) as exc:
        _logger.warning("otel-vllm-ascend: the writer process could not start (%s: %s); every "
                        "vLLM process builds and exports its spans itself",
                        type(exc).__name__, exc)
        return None
    finally:
        listener.close()  # the writer holds its own copy
    os.environ[ADDRESS_ENV] = address
    _logger.info("otel-vllm-ascend: pid %d: writer process %d started (%s)", os.getpid(),
                 process.pid, address)
    return WriterClient(address, provider, process)


def wait_for_writer(client: Optional[WriterClient], timeout_s: float = 30.0) -> None:
    """Wait until the writer this process started has exited (tests, the CLI)."""
    process = getattr(client, "process", None)
    if process is None:
        return
    deadline = time.monotonic() + timeout_s
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
