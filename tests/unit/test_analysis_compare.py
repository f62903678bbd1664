"""``otel-vllm-analyze compare``: the statistics by hand, and whole runs with planted changes.

The captures are real files from :func:`analysis_fixtures.simulate_service`; a difference is
planted by rewriting one capture's rows (every ``modelExec`` span made twice as long), so
exactly the values that depend on it must move and nothing else.
"""

import csv
import logging
import math
import shutil
import sqlite3
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from analysis_fixtures import simulate_service  # noqa: E402

from otel_vllm_ascend.analysis import compare  # noqa: E402
from otel_vllm_ascend.analysis.cli import main as analyze_main  # noqa: E402
from otel_vllm_ascend.analysis.compare_cli import main as compare_main  # noqa: E402

# ----------------------------------------------------------------------------- statistics


def test_mann_whitney_by_hand():
    # U1 = 0 (every A below every B); mean 4.5, variance 3*3/12*7 = 5.25;
    # z = (4.5 - 0.5) / sqrt(5.25) = 1.74574; p = 2 * (1 - Phi(1.74574)) = 0.080856
    assert compare.mann_whitney_p(np.array([1.0, 2, 3]), np.array([4.0, 5, 6])) == \
        pytest.approx(0.080856, abs=2e-6)


def test_probability_of_b_higher_by_hand():
    # A = [1, 2, 2], B = [2, 3, 3]: of the 9 pairs B is larger in 7 (1 < 2, 3, 3 and
    # 2 < 3, 3 twice) and tied in 2 (2 = 2 twice): (7 + 2 / 2) / 9
    assert compare.mann_whitney(np.array([1.0, 2, 2]), np.array([2.0, 3, 3]))[1] == \
        pytest.approx(8 / 9)
    assert compare.mann_whitney(np.array([5.0, 6]), np.array([1.0, 2]))[1] == 0.0


def test_mann_whitney_with_ties_by_hand():
    # A = [1, 2, 2], B = [2, 3, 3]; ranks of 1,2,2,2,3,3: 1, 3, 3, 3, 5.5, 5.5
    # R_A = 1 + 3 + 3 = 7, U1 = 7 - 6 = 1, mean 4.5; ties: 3 twos (24), 2 threes (6)
    # variance = 9/12 * (7 - 30/30) = 4.5; z = (3.5 - 0.5) / sqrt(4.5) = 1.41421; p = 0.157299
    assert compare.mann_whitney_p(np.array([1.0, 2, 2]), np.array([2.0, 3, 3])) == \
        pytest.approx(0.157299, abs=2e-6)


def test_mann_whitney_identical_and_constant_samples():
    values = np.array([3.0, 1.0, 2.0, 5.0])
    assert compare.mann_whitney_p(values, values.copy()) == 1.0
    assert compare.mann_whitney_p(np.full(5, 2.0), np.full(7, 2.0)) == 1.0
    assert math.isnan(compare.mann_whitney_p(values, np.zeros(0)))


def test_median_standard_error_by_hand():
    # n = 9: half-width 1.959964 * 3 / 2 = 2.94 ranks -> 0-based order statistics
    # floor(4.5 - 2.94) = 1 and ceil(4.5 + 2.94) = 8: values 2 and 9; (9 - 2) / 3.919928
    assert compare.median_standard_error(np.arange(1.0, 10.0)) == \
        pytest.approx(7 / 3.919928, rel=1e-6)


def test_compare_samples_same_values_is_no_difference():
    values = np.linspace(10, 20, 50)
    row = compare.compare_samples(values, values.copy())
    assert row["diff"] == 0 and row["rel_diff"] == 0 and row["p_value"] == 1.0
    assert row["significant"] is False and row["verdict"] == compare.SAME
    assert row["ci95_low"] < 0 < row["ci95_high"]


def test_compare_samples_shift_is_flagged_with_its_direction():
    rng = np.random.default_rng(3)
    a = rng.normal(100, 5, 200)
    row = compare.compare_samples(a, a * 0.8)
    assert row["significant"] is True and row["verdict"] == compare.B_LOWER
    assert row["rel_diff"] == pytest.approx(-0.2)
    assert row["ci95_high"] < 0
    row = compare.compare_samples(a, a + 30)
    assert row["verdict"] == compare.B_HIGHER and row["diff"] == pytest.approx(30)


def test_compare_samples_tiny_shift_is_below_the_effect_floor():
    # 20,000 values each, shifted by 1 %: the test alone would call it significant.
    rng = np.random.default_rng(5)
    a = rng.normal(100, 1, 20_000)
    row = compare.compare_samples(a, a * 1.01)
    assert row["p_value"] < 1e-10
    assert row["significant"] is False and row["verdict"] == compare.SAME
    assert compare.compare_samples(a, a * 1.01, min_effect=0.005)["significant"] is True


def test_effect_must_go_the_way_of_the_test():
    # B's values are mostly a little lower (90 % of pairs: median -1 %), a few much higher
    # (mean +9 %): the test says "B lower", the 9 % goes the other way and does not count.
    a = np.full(100, 100.0)
    b = np.concatenate((np.full(90, 99.0), np.full(10, 200.0)))
    row = compare.compare_samples(a, b)
    assert row["p_value"] < 1e-6 and row["prob_b_higher"] == pytest.approx(0.1)
    assert row["rel_diff"] == pytest.approx(-0.01)
    assert row["significant"] is False and row["verdict"] == compare.SAME
    assert compare.compare_samples(a, b, min_effect=0.005)["verdict"] == compare.B_LOWER


def test_compare_samples_few_or_missing_values():
    row = compare.compare_samples(np.array([1.0, 2.0, 3.0]), np.array([10.0, 20, 30]))
    assert row["verdict"] == compare.FEW and row["significant"] is None
    assert row["diff"] == 18.0 and math.isnan(row["p_value"])
    row = compare.compare_samples(np.array([1.0, 2.0]), np.zeros(0))
    assert row["verdict"] == compare.ONLY_A and math.isnan(row["diff"]) and row["n_b"] == 0


def test_relative_difference_from_zero():
    row = compare.compare_samples(np.zeros(10), np.full(10, 0.5))
    assert math.isinf(row["rel_diff"]) and row["significant"] is True


# ----------------------------------------------------------------------------- whole runs

def _capture(folder: Path, seed: int = 1, requests: int = 60) -> Path:
    simulate_service(requests, seed=seed, max_batch=4).capture.write(folder)
    return folder


def _slow_down_model_exec(folder: Path, factor: int = 2) -> int:
    changed = 0
    for db in folder.rglob("ms_service_*.db"):
        conn = sqlite3.connect(db)
        changed += conn.execute(
            "UPDATE Mstx SET endTimestamp = timestamp + ? * (endTimestamp - timestamp)"
            " WHERE message LIKE '%\"modelExec\"%'", (factor,)).rowcount
        conn.commit()
        conn.close()
    return changed


def _rows(path: Path) -> dict:
    with open(path, newline="") as handle:
        return {(r["section"], r["metric"]): r for r in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    base = _capture(root / "base")
    slow = _capture(root / "slow")
    assert _slow_down_model_exec(slow) > 0
    return root, base, slow


def test_compare_with_itself_shows_no_difference(runs, capsys):
    root, base, _ = runs
    assert compare_main([str(base), str(base), "-o", str(root / "self")]) == 0
    table = _rows(root / "self" / "compare.csv")
    tested = [r for r in table.values() if r["p_value"]]
    assert len(tested) >= 10
    for row in table.values():
        assert row["significant"] != "True", row
        if row["value_a"]:
            assert float(row["diff"]) == 0.0, row
    assert "differences beyond noise: 0 of" in capsys.readouterr().out
    assert (root / "self" / "compare.html").stat().st_size > 0


def test_planted_difference_is_found_and_nothing_else(runs, capsys):
    root, base, slow = runs
    assert compare_main([str(base), str(slow), "-o", str(root / "planted")]) == 0
    table = _rows(root / "planted" / "compare.csv")
    flagged = {key for key, row in table.items() if row["significant"] == "True"}
    assert flagged == {("batch", "model execution per step"), ("span", "modelExec")}
    for key in flagged:
        assert table[key]["verdict"] == compare.B_HIGHER
        assert float(table[key]["rel_diff"]) == pytest.approx(1.0, abs=1e-6)
        assert float(table[key]["value_b"]) == pytest.approx(2 * float(table[key]["value_a"]))
    assert table[("request", "TTFT")]["verdict"] == compare.SAME
    out = capsys.readouterr().out
    assert "differences beyond noise: 2 of" in out and "modelExec" in out
    page = (root / "planted" / "compare.html").read_text()
    assert page.count("<svg") == 2 and 'class="flagged"' in page
    # The other way round, B is the faster run.
    assert compare_main([str(slow), str(base), "-o", str(root / "reverse")]) == 0
    reverse = _rows(root / "reverse" / "compare.csv")
    assert reverse[("span", "modelExec")]["verdict"] == compare.B_LOWER
    assert float(reverse[("span", "modelExec")]["rel_diff"]) == pytest.approx(-0.5, abs=1e-6)


def test_output_folder_reads_the_same_as_its_capture(runs, capsys):
    root, base, _ = runs
    outputs = root / "analysed"
    assert analyze_main(["--input-path", str(base), "--output-path", str(outputs),
                         "--format", "csv", "db"]) == 0
    assert compare_main([str(outputs), str(base), "-o", str(root / "mixed")]) == 0
    table = _rows(root / "mixed" / "compare.csv")
    for row in table.values():
        assert row["n_a"] == row["n_b"], row
        if row["value_a"]:
            assert float(row["value_a"]) == pytest.approx(float(row["value_b"]), abs=1e-6), row
    assert ("span", "modelExec") in table


def _one_line(caplog, level: int) -> str:
    lines = [r.getMessage() for r in caplog.records if r.levelno >= level]
    assert len(lines) == 1, lines
    return lines[0]


def test_missing_second_input_one_message(runs, caplog, tmp_path):
    _, base, _ = runs
    with caplog.at_level(logging.WARNING):
        assert compare_main([str(base), str(tmp_path / "nowhere"), "-o",
                             str(tmp_path / "o")]) == 1
    line = _one_line(caplog, logging.WARNING)
    assert line.startswith("B (") and "nowhere" in line and "does not exist" in line
    assert not (tmp_path / "o" / "compare.csv").exists()


def test_damaged_second_capture_one_message(runs, caplog, tmp_path):
    _, base, _ = runs
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ms_service_node-1.db").write_bytes(b"this is not sqlite")
    with caplog.at_level(logging.WARNING):
        assert compare_main([str(base), str(bad), "-o", str(tmp_path / "o")]) == 1
    line = _one_line(caplog, logging.WARNING)
    assert line.startswith(f"B ({bad})") and "not a readable capture" in line


def test_empty_second_folder_one_message(runs, caplog, tmp_path):
    _, base, _ = runs
    (tmp_path / "empty").mkdir()
    with caplog.at_level(logging.WARNING):
        assert compare_main([str(base), str(tmp_path / "empty"), "-o",
                             str(tmp_path / "o")]) == 1
    assert "no capture and no analysis output found" in _one_line(caplog, logging.WARNING)


def test_partial_second_capture_keeps_what_it_can(runs, caplog, tmp_path):
    _, base, _ = runs
    api_only = tmp_path / "api_only"
    api_only.mkdir()
    for db in base.rglob("ms_service_*-100.db"):  # the API server's file alone
        (api_only / db.name).write_bytes(db.read_bytes())
    with caplog.at_level(logging.WARNING):
        assert compare_main([str(base), str(api_only), "-o", str(tmp_path / "o")]) == 0
    line = _one_line(caplog, logging.WARNING)
    assert line.startswith(f"B ({api_only}): partial input") and "no engine steps" in line
    table = _rows(tmp_path / "o" / "compare.csv")
    assert table[("request", "TTFT")]["verdict"] == compare.SAME
    assert table[("batch", "batch size")]["verdict"] == compare.ONLY_A
    assert table[("batch", "batch size")]["n_b"] == "0"
    assert table[("span", "modelExec")]["verdict"] == compare.ONLY_A
    assert "B (" in (tmp_path / "o" / "compare.html").read_text()


def test_output_folder_without_batch_csv(runs, caplog, tmp_path):
    root, base, _ = runs
    outputs = tmp_path / "requests_only"
    assert analyze_main(["--input-path", str(base), "--output-path", str(outputs),
                         "--format", "csv"]) == 0
    for name in ("batch.csv", "batch_summary.csv"):
        (outputs / name).unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert compare_main([str(base), str(outputs), "-o", str(tmp_path / "o")]) == 0
    line = _one_line(caplog, logging.WARNING)
    assert line.startswith(f"B ({outputs}): partial input") and "no batch table" in line
    assert "no profiler.db or chrome_tracing.json" in line
    table = _rows(tmp_path / "o" / "compare.csv")
    assert table[("request", "TTFT")]["diff"] == "0.0"
    assert table[("batch", "model execution per step")]["verdict"] == compare.ONLY_A


def test_truncated_second_capture_named_in_one_line(runs, caplog, tmp_path):
    _, base, _ = runs
    cut = tmp_path / "cut"
    cut.mkdir()
    for db in base.rglob("ms_service_*.db"):
        data = db.read_bytes()
        (cut / db.name).write_bytes(data if db.name.endswith("-100.db") else
                                    data[:len(data) // 2])
    with caplog.at_level(logging.WARNING):
        assert compare_main([str(base), str(cut), "-o", str(tmp_path / "o")]) == 0
    line = _one_line(caplog, logging.WARNING)
    assert line.startswith(f"B ({cut})") and "truncated or damaged" in line


def test_output_path_that_is_a_file(runs, caplog, tmp_path):
    _, base, _ = runs
    (tmp_path / "taken").write_text("x")
    with caplog.at_level(logging.WARNING):
        assert compare_main([str(base), str(base), "-o", str(tmp_path / "taken")]) == 2
    assert "exists and is not a folder" in _one_line(caplog, logging.WARNING)


def test_bad_arguments(tmp_path):
    assert compare_main([str(tmp_path), str(tmp_path), "--alpha", "2"]) == 2
    with pytest.raises(SystemExit):
        compare_main([str(tmp_path)])


# ----------------------------------------------------------------------------- time windows

HOUR_US = 3_600_000_000


def _utc(us: float) -> str:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).isoformat()


def test_two_windows_of_one_capture_folder(tmp_path, capsys):
    """Two runs one hour apart in one folder (a server restarted with another setting, its
    captures next to the first's): each window is one run."""
    start = 1_764_400_000_000_000.0
    folder = tmp_path / "prof"
    simulate_service(60, seed=1, max_batch=4, start_us=start).capture.write(
        folder, session="first")
    simulate_service(60, seed=1, max_batch=4, start_us=start + HOUR_US, api_pid=300,
                     engine_pid=400).capture.write(folder, session="second")
    assert _slow_down_model_exec(folder / "second") > 0
    middle = _utc(start + HOUR_US / 2)
    assert compare_main([str(folder), str(folder), "-o", str(tmp_path / "o"),
                         "--until-a", middle, "--since-b", middle]) == 0
    table = _rows(tmp_path / "o" / "compare.csv")
    flagged = {key for key, row in table.items() if row["significant"] == "True"}
    assert flagged == {("batch", "model execution per step"), ("span", "modelExec")}
    assert float(table[("span", "modelExec")]["rel_diff"]) == pytest.approx(1.0, abs=1e-6)
    assert table[("request", "TTFT")]["n_a"] == table[("request", "TTFT")]["n_b"] == "60"
    out = capsys.readouterr().out
    assert f"A: {folder} (capture, records starting the start to {middle.replace('T', ' ')})" \
        in out
    # the same windows relative to the capture: the first half hour and what follows
    assert compare_main([str(folder), str(folder), "-o", str(tmp_path / "rel"),
                         "--until-a", "start+30m", "--since-b", "start+30m"]) == 0
    relative = _rows(tmp_path / "rel" / "compare.csv")
    assert {key for key, row in relative.items() if row["significant"] == "True"} == flagged
    # without windows both sides are the two runs together: no difference
    assert compare_main([str(folder), str(folder), "-o", str(tmp_path / "same")]) == 0
    assert not any(row["significant"] == "True"
                   for row in _rows(tmp_path / "same" / "compare.csv").values())


def test_window_errors_one_message(runs, caplog, tmp_path):
    root, base, _ = runs
    outputs = tmp_path / "analysed"
    assert analyze_main(["--input-path", str(base), "--output-path", str(outputs),
                         "--format", "csv"]) == 0
    with caplog.at_level(logging.ERROR):
        assert compare_main([str(outputs), str(base), "-o", str(tmp_path / "o"),
                             "--since-a", "2026-01-01T00:00"]) == 1
    assert f"A ({outputs}): a time window needs a capture folder" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert compare_main([str(base), str(base), "-o", str(tmp_path / "o2"),
                             "--since-b", "2100-01-01T00:00"]) == 1
    assert f"B ({base}): no record starts in the time window 2100-01-01 00:00:00+00:00 to" \
        " the end in the 2 capture file(s) read (their records start from 2025-11-29" \
        in caplog.text
    with pytest.raises(SystemExit) as stopped:
        compare_main([str(base), str(base), "--since-a", "2026-01-02", "--until-a",
                      "2026-01-01"])
    assert stopped.value.code == 2
    # a relative time for a missing input: that input's own message
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert compare_main([str(base), str(tmp_path / "nowhere"), "-o", str(tmp_path / "o3"),
                             "--since-b", "start+1m"]) == 1
    assert f"B ({tmp_path / 'nowhere'}): does not exist" in caplog.text


def test_window_error_names_its_side(runs, capsys):
    _, base, _ = runs
    with pytest.raises(SystemExit):
        compare_main([str(base), str(base), "--since-b", "2026-01-02", "--until-b",
                      "2026-01-01"])
    assert f"B ({base}): --since-b must be before --until-b" in capsys.readouterr().err


def test_window_reads_the_capture_next_to_its_outputs(runs, tmp_path):
    """Outputs written into the capture folder itself: a window reads the capture."""
    _, base, _ = runs
    both = tmp_path / "both"
    shutil.copytree(base, both)
    assert analyze_main(["--input-path", str(both), "--output-path", str(both),
                         "--format", "csv"]) == 0
    assert compare_main([str(both), str(both), "-o", str(tmp_path / "o"),
                         "--since-a", "2000-01-01"]) == 0
    table = _rows(tmp_path / "o" / "compare.csv")
    # A, windowed, is read from the capture (spans too); B from the outputs (CSV only: no spans)
    assert int(table[("span", "modelExec")]["n_a"]) > 0 == int(table[("span", "modelExec")]["n_b"])
    assert table[("request", "TTFT")]["n_a"] == table[("request", "TTFT")]["n_b"] == "60"
