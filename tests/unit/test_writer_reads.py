"""The writer's reads (``exporters/writer.py``): the RECORDS frames of one read are built in one
call (one transaction in the file), in order; frames before a broken one are still built."""

from __future__ import annotations

import socket

from otel_vllm_ascend import handoff
from otel_vllm_ascend.exporters import writer as writer_module


class _Producer:
    """Stands in for ``writer.Producer``: records what it is asked to build."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = handoff.FrameReader()
        self.building = object()
        self.pid = 4242
        self.builds = []
        self.finished = False

    def build(self, wires):
        self.builds.append(list(wires))

    def finish(self):
        self.finished = True
        self.sock.close()


def _writer_and_producer():
    listener, _ = socket.socketpair()
    writer = writer_module.Writer(listener, parent=-1)
    ours, theirs = socket.socketpair()
    producer = _Producer(ours)
    writer.producers[ours.fileno()] = producer
    return writer, producer, theirs


def _wires(tag: str, count: int):
    return [(tag, index) for index in range(count)]


def test_frames_of_one_read_are_built_together_in_order():
    writer, producer, peer = _writer_and_producer()
    peer.sendall(b"".join(handoff.records_frame(_wires(tag, 3)) for tag in "abc"))
    assert writer._read(producer)
    assert producer.builds == [_wires("a", 3) + _wires("b", 3) + _wires("c", 3)]
    peer.sendall(handoff.records_frame(_wires("d", 2)))  # the next read: its own build
    assert writer._read(producer)
    assert producer.builds[1:] == [_wires("d", 2)]


def test_frames_before_a_bye_or_a_broken_frame_are_built():
    writer, producer, peer = _writer_and_producer()
    peer.sendall(handoff.records_frame(_wires("a", 2)) + handoff.frame(handoff.BYE, None))
    assert not writer._read(producer)
    assert producer.builds == [_wires("a", 2)] and producer.finished

    writer, producer, peer = _writer_and_producer()
    peer.sendall(handoff.records_frame(_wires("a", 2)) + handoff.records_frame(_wires("b", 1))
                 + handoff.frame(handoff.HELLO, {"format": handoff.FORMAT}))  # unexpected now
    assert not writer._read(producer)
    assert producer.builds == [_wires("a", 2) + _wires("b", 1)]  # built once, not twice
    assert producer.finished
