"""A child process that, like EngineCore flushing its records, needs a moment after SIGTERM."""

import os
import signal
import sys
import time


def run(marker: str) -> None:
    def on_term(signum, frame):
        time.sleep(0.5)
        with open(marker, "w") as f:
            f.write("clean exit")
        sys.exit(0)

    signal.signal(signal.SIGTERM, on_term)
    with open(marker + ".ready", "w"):
        pass
    while True:
        time.sleep(0.05)


def wait_ready(marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not os.path.exists(marker + ".ready"):
        if time.monotonic() > deadline:
            raise TimeoutError("child did not start")
        time.sleep(0.05)
