"""``native_thread.current.id``: the OS thread id, per thread and per forked process."""

from __future__ import annotations

import os
import threading

import pytest

from otel_vllm_ascend import native_thread


def test_each_thread_reads_its_own_id():
    assert native_thread.current.id == threading.get_native_id()
    seen = {}

    def read():
        seen["thread"] = (native_thread.current.id, threading.get_native_id())

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    assert seen["thread"][0] == seen["thread"][1] != threading.get_native_id()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_reads_its_own_id():
    parent = native_thread.current.id
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it saw its own id, then leave at once
        ok = native_thread.current.id == threading.get_native_id() != parent
        os.write(writer, b"1" if ok else b"0")
        os._exit(0)
    os.close(writer)
    answer = os.read(reader, 1)
    os.waitpid(pid, 0)
    assert answer == b"1"
