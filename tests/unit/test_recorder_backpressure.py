"""Back-pressure: a full record queue drops and counts, never blocks, and says so once."""

from __future__ import annotations

import logging

from runtime_helpers import Capture

from otel_vllm_ascend import drops, recorder


def test_full_queue_drops_counts_and_warns_once(monkeypatch, caplog):
    capture = Capture()
    recorder.set_tracer_provider(capture.provider)
    recorder.flush()
    monkeypatch.setattr(recorder, "MAX_QUEUE", 0)  # every record finds the queue full
    monkeypatch.setattr(drops, "_drops", drops._Drops())  # this test's drops only
    with caplog.at_level(logging.WARNING, logger="otel_vllm_ascend"):
        for i in range(5):
            recorder.record_event("Enqueue", {"ms.domain": "Schedule", "ms.rid": str(i)})
        recorder.flush_at_exit()
    assert recorder.dropped_count() == 5
    assert capture.spans() == []
    messages = [r.getMessage() for r in caplog.records]
    assert sum("record queue full" in m for m in messages) == 1
    assert sum("dropped 5 records" in m for m in messages) == 1  # one count, reported once
    drops.report()
    assert sum("dropped" in m for m in [r.getMessage() for r in caplog.records]) == 1


def test_a_task_is_dropped_and_counted_when_the_queue_is_full(monkeypatch):
    """Every step's records are tasks: a full queue drops them as it drops span records."""
    monkeypatch.setattr(recorder, "MAX_QUEUE", 0)
    monkeypatch.setattr(drops, "_drops", drops._Drops())  # this test's drops only
    assert recorder.record_task(len, "a step's values") is False
    assert recorder.record_task(len, "the next step's") is False
    assert recorder.dropped_count() == 2
