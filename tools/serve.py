"""Start and stop a real ``vllm serve`` on loopback, for the demo, end-to-end tests and benchmarks.

:class:`VllmServer` runs ``[launcher...] vllm serve MODEL`` on a free 127.0.0.1 port with the
settings a 2-core CPU machine needs (``VLLM_CPU_KVCACHE_SPACE=1``, ``--enforce-eager``,
``--max-model-len 256``, bf16), keeps every cache and temporary file inside its work folder
(``VLLM_CACHE_ROOT``, ``TMPDIR``, offline Hugging Face), waits for ``/health`` and stops the whole
process tree: SIGTERM to the server first (vLLM then shuts its EngineCore and Worker down cleanly,
so their exit handlers flush spans), SIGKILL to what is left of the process group after a grace
period. The server's output goes to ``<work>/server.log``; start failures quote its tail.

Command line (serve the tiny model until Ctrl-C)::

    python tools/serve.py [--model DIR] [--port N] [--work DIR] [-- extra vllm args]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from ctypes.util import find_library
from pathlib import Path
from typing import Mapping, Optional, Sequence

HEALTH_TIMEOUT_S = float(os.environ.get("OTEL_VLLM_HEALTH_TIMEOUT", "240"))
STOP_GRACE_S = 60.0
SERVED_MODEL_NAME = "tiny"


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy; the message quotes its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def venv_bin(name: str) -> str:
    """A console script of the interpreter running us (the test venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def base_env(work_dir: Path) -> dict:
    """Environment for a vLLM that writes nothing outside ``work_dir`` and never goes online."""
    tmp = work_dir / "tmp"
    cache = work_dir / "vllm-cache"
    tmp.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.update({
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(cache),
        "TMPDIR": str(tmp),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": str(work_dir / "hf-home"),
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "PYTHONUNBUFFERED": "1",
    })
    preload = demanded_preloads()
    if preload:
        env["LD_PRELOAD"] = " ".join(filter(None, [env.get("LD_PRELOAD", ""), *preload]))
    return env


_REFUSES_WITHOUT_PRELOAD = re.compile(
    r'raise RuntimeError\(\s*f"\{name\} is not found in LD_PRELOAD')


def demanded_preloads(worker: Optional[Path] = None) -> list:
    """The libraries vLLM's CPU worker (``worker``: the installed vLLM's) refuses to start
    without in ``LD_PRELOAD`` (vllm-cpu 0.18 checks for tcmalloc and Intel's OpenMP, as its
    install guide sets them), or [] where it does not ask. What is not found is left out: vLLM
    then says what it missed."""
    if worker is None:
        worker = Path(sysconfig.get_paths()["purelib"]) / "vllm/v1/worker/cpu_worker.py"
    try:  # other lines only warn
        if not _REFUSES_WITHOUT_PRELOAD.search(worker.read_text()):
            return []
    except OSError:
        return []
    iomp = Path(sys.prefix) / "lib" / "libiomp5.so"  # from the intel-openmp wheel vLLM needs
    return [lib for lib in (find_library("tcmalloc_minimal") or find_library("tcmalloc"),
                            str(iomp) if iomp.exists() else None) if lib]


class VllmServer:
    """One ``vllm serve`` process tree; use as a context manager or call start()/stop()."""

    def __init__(
        self,
        model: Path,
        work_dir: Path,
        *,
        port: Optional[int] = None,
        env: Optional[Mapping[str, str]] = None,
        launcher: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        log_name: str = "server.log",
    ) -> None:
        self.model = Path(model)
        self.work_dir = Path(work_dir)
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra_env = dict(env or {})
        self.launcher = list(launcher)
        self.extra_args = list(extra_args)
        self.log_path = self.work_dir / log_name
        self.process: Optional[subprocess.Popen] = None
        self.started_at = 0.0
        self.ready_after_s = 0.0
        self.stop_seconds: Optional[float] = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def model_name(self) -> str:
        return SERVED_MODEL_NAME

    def command(self) -> list:
        launcher = [venv_bin(self.launcher[0]), *self.launcher[1:]] if self.launcher else []
        return [
            *launcher, venv_bin("vllm"), "serve", str(self.model),
            "--served-model-name", SERVED_MODEL_NAME,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--max-model-len", "256", "--dtype", "bfloat16", "--enforce-eager",
            "--seed", "0",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = HEALTH_TIMEOUT_S) -> VllmServer:
        env = base_env(self.work_dir)
        env.update(self.extra_env)
        log = open(self.log_path, "ab")
        log.write(f"$ {' '.join(self.command())}\n".encode())
        log.flush()
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.command(), cwd=str(self.work_dir), env=env, stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        try:
            self._wait_healthy(timeout_s)
        except BaseException:
            self.stop()
            raise
        self.ready_after_s = time.monotonic() - self.started_at
        return self

    def _wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"vllm serve exited with code {self.process.returncode} before becoming "
                    f"healthy; last lines of {self.log_path}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise ServerStartError(
            f"vllm serve not healthy after {timeout_s:.0f} s; last lines of {self.log_path}:\n"
            f"{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def pids(self) -> list:
        """PIDs of the server and all its descendants (API server, EngineCore, Worker, ...)."""
        import psutil

        if self.process is None or self.process.poll() is not None:
            return []
        try:
            root = psutil.Process(self.process.pid)
            return [root.pid] + [child.pid for child in root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def stop(self, grace_s: float = STOP_GRACE_S, sig: int = signal.SIGTERM) -> Optional[int]:
        """Send ``sig`` (SIGTERM, or SIGINT as Ctrl-C does) to the server, wait for a clean
        exit, then kill whatever of the tree is left. ``stop_seconds`` is how long the server
        itself took to exit (None when it had to be killed)."""
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            started = time.monotonic()
            try:
                process.send_signal(sig)
                process.wait(grace_s)
                self.stop_seconds = time.monotonic() - started
            except subprocess.TimeoutExpired:
                pass
        # Children still alive after the server's own exit (or timeout) are ours to end.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            pass
        return process.returncode

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: Optional[list] = None) -> int:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_tiny_model import ensure_model

    parser = argparse.ArgumentParser(description="Serve the tiny model with vLLM on loopback.")
    parser.add_argument("--model", type=Path, help="model folder (default: the tiny model)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--work", type=Path, default=Path("serve-work"))
    parser.add_argument("vllm_args", nargs="*", help="extra arguments for vllm serve")
    args = parser.parse_args(argv)
    server = VllmServer(args.model or ensure_model(), args.work, port=args.port,
                        extra_args=args.vllm_args)
    with server:
        print(f"serving at {server.url} (log {server.log_path}); Ctrl-C stops", flush=True)
        try:
            while server.process.poll() is None:
                time.sleep(1)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
