"""The API server's ``detokenize`` names EngineCore's request ids (as our handler and
msserviceprofiler's write it); captures made before named the client's. The link records join
either with the request, so one capture written both ways gives the same outputs."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import db_contents, simulate_service  # noqa: E402

from otel_vllm_ascend.analysis.cli import main  # noqa: E402


@pytest.fixture(autouse=True)
def serial(monkeypatch):
    monkeypatch.setenv("OTEL_VLLM_ANALYZE_SERIAL", "1")


def test_detokenize_of_engine_or_client_ids_gives_the_same_outputs(tmp_path):
    outputs = {}
    for external in (False, True):
        sim = simulate_service(80, seed=8, max_batch=6, max_output=12,
                               external_outputs=external)
        capture, out = tmp_path / f"capture-{external}", tmp_path / f"out-{external}"
        sim.capture.write(capture)
        assert main(["--input-path", str(capture), "--output-path", str(out)]) == 0
        outputs[external] = out
    engine, client = outputs[False], outputs[True]
    tables = sorted(path.name for path in engine.glob("*.csv"))
    assert "request.csv" in tables and "request_summary.csv" in tables
    assert tables == sorted(path.name for path in client.glob("*.csv"))
    for name in tables + ["chrome_tracing.json", "report.html"]:
        assert (engine / name).read_bytes() == (client / name).read_bytes(), name
    assert db_contents(engine / "profiler.db") == db_contents(client / "profiler.db")
    # the gaps between a request's outputs come from detokenize: found, not left empty
    (gaps,) = [line for line in (engine / "request_summary.csv").read_text().splitlines()
               if line.startswith("subsequent_token_latency")]
    assert float(gaps.split(",")[1]) > 0
