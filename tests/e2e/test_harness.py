"""The end-to-end harness itself, on vLLM without the tool: model, server, client."""

from __future__ import annotations

import hashlib

from build_tiny_model import build


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file()}


def test_tiny_model_build_is_deterministic(tiny_model, tmp_path):
    rebuilt = build(tmp_path / "model")
    assert _digests(rebuilt) == _digests(tiny_model)
    assert {"config.json", "model.safetensors", "tokenizer.json",
            "tokenizer_config.json"} <= set(_digests(rebuilt))


def test_baseline_serves_every_request(baseline):
    results = baseline.results("identity")
    assert results and all(r.ok for r in results), [r.error for r in results if not r.ok]
    for result in results:
        assert result.prompt_tokens > 0
        assert result.completion_tokens > 0
        assert 0 < result.ttft_s <= result.latency_s


def test_baseline_reports_kv_blocks_and_engine_core(baseline):
    # A Worker process too with the multiprocess executor; up to vLLM 0.11 one CPU worker runs
    # inside EngineCore (UniProcExecutor) by default.
    # vLLM titles its children from 0.10.1 on (VLLM::EngineCore); before, they are "python -c".
    assert baseline.num_gpu_blocks and baseline.num_gpu_blocks > 0
    assert len(baseline.pid_names) >= 2, baseline.pid_names
    names = " | ".join(baseline.pid_names.values())
    assert "EngineCore" in names or "VLLM::" not in names, names
