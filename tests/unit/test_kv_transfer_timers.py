"""The default file's KV-transfer timers: their ``attributes`` read what vllm-ascend passes.

vllm-ascend is not installed here, so the entries of the packaged symbol file are installed on
classes with the same names and signatures as vllm-ascend's Mooncake connector (0.21 and later)
and called the way the connector calls them (``add_request`` with keywords only,
``_transfer_kv_cache_all_groups`` with the queued dict).
"""

from __future__ import annotations

import dataclasses
import importlib

from runtime_helpers import Capture, instrument, write_module

from otel_vllm_ascend.symbols import PACKAGED_SYMBOLS, load_symbols

MOONCAKE = "vllm_ascend.distributed.kv_transfer.kv_p2p.mooncake_connector"

CONNECTOR = """
class KVCacheRecvingThread:
    tp_rank = 2
    local_engine_id = "engine-7"

    def add_request(self, request_id, remote_request_id, local_block_ids, remote_block_ids,
                    group_pulls, remote_engine_id, remote_host, remote_handshake_port,
                    remote_block_size=None, remote_port_send_num=None, num_computed_tokens=0,
                    all_task_done=False, shard_idx=0, local_block_ids_replicate_k=None,
                    remote_block_ids_replicate_k=None):
        return None

    def _transfer_kv_cache_all_groups(self, req_meta):
        return None

    def get_and_clear_finished_requests(self):
        return {"req-1"}


class KVCacheTaskTracker:
    finished_requests = {"req-0"}
    reqs_to_process = set()

    def update_done_task_count(self, request_id):
        return None

    def get_and_clear_finished_requests(self):
        return set()
"""


def _retargeted(module):
    """The packaged entries for the Mooncake connector, pointed at ``module``."""
    specs = load_symbols(PACKAGED_SYMBOLS, vllm_version="0.25.1").specs
    return [dataclasses.replace(s, module=module, symbol=f"{module}:{s.qualname}")
            for s in specs if s.module == MOONCAKE and s.qualname.split(".")[0] in
            ("KVCacheRecvingThread", "KVCacheTaskTracker")]


def test_mooncake_timers_read_keywords_and_dict_items(tmp_path):
    name = write_module(tmp_path, CONNECTOR)
    specs = _retargeted(name)
    assert {s.name for s in specs} == {"MooncakeRecvThread.enqueue", "MooncakeSyncRead",
                                       "MooncakeRecvFinishedPoll", "MooncakeTaskDone",
                                       "MooncakeTaskFinishedPoll"}
    capture = Capture()
    instrumentor = instrument(capture, specs)
    try:
        module = importlib.import_module(name)
        thread = module.KVCacheRecvingThread()
        thread.add_request(request_id="d-1", remote_request_id="p-1", local_block_ids=[[1]],
                           remote_block_ids=[[2]], group_pulls=[], remote_engine_id="engine-3",
                           remote_host="10.0.0.2", remote_handshake_port=5000)
        thread._transfer_kv_cache_all_groups({"remote_request_id": "p-1", "request_id": "d-1"})
        assert thread.get_and_clear_finished_requests() == {"req-1"}
        module.KVCacheTaskTracker().update_done_task_count("req-0")
        assert instrumentor.problems == [] and len(instrumentor.hooks) == 5
    finally:
        instrumentor.uninstrument()
    spans = {s.name: s for s in capture.spans()}
    enqueue = spans["MooncakeRecvThread.enqueue"].attributes
    assert {k: enqueue[k] for k in ("req_id", "remote_req_id", "remote_engine_id", "remote_host",
                                    "remote_handshake_port", "tp_rank", "engine_id")} == {
        "req_id": "d-1", "remote_req_id": "p-1", "remote_engine_id": "engine-3",
        "remote_host": "10.0.0.2", "remote_handshake_port": "5000", "tp_rank": "2",
        "engine_id": "engine-7"}
    assert "offset" not in enqueue  # not passed by this release: left out, not guessed
    assert enqueue["ms.domain"] == "KVTransfer"
    read = spans["MooncakeSyncRead"].attributes
    assert (read["req_id"], read["ms.domain"]) == ("p-1", "Execute")
    assert spans["MooncakeRecvFinishedPoll"].attributes["req_ids"] == "{'req-1'}"
    done = spans["MooncakeTaskDone"].attributes
    assert (done["req_id"], done["finished_req_ids"]) == ("req-0", "{'req-0'}")


def test_transfer_entries_follow_the_rename():
    def names(version):
        return {s.qualname for s in load_symbols(PACKAGED_SYMBOLS, vllm_version=version).specs
                if s.module == MOONCAKE}
    assert "KVCacheRecvingThread._transfer_kv_cache" in names("0.20.2")
    assert "KVCacheRecvingThread._transfer_kv_cache_all_groups" not in names("0.20.2")
    assert "KVCacheRecvingThread._transfer_kv_cache_all_groups" in names("0.21.0")
    assert "KVCacheRecvingThread._transfer_kv_cache" not in names("0.21.0")
    assert names("0.13.0") == set()  # the module moved to this path in vllm-ascend 0.14
