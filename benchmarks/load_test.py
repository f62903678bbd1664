"""Load test: 2,000 requests at concurrency 64 through a profiled ``vllm serve``.

Checks, and prints, after one bounded run on loopback (it stops by itself):

* every client request succeeded and appears exactly once in ``request.csv``, with the token
  counts the client received;
* nothing was dropped: no drop message from the span queue or the ms_service exporter in the
  server log, and the capture is complete in itself (one ``httpReq``/``httpRes`` per request,
  one ``Free`` per request, one ``modelExec``, ``computing_logits`` and ``sample`` per engine step);
* the server's results are unchanged: the same workload on vLLM without the tool returns the
  same token counts, and a sequential sample returns the same text.

    .venv/bin/python benchmarks/load_test.py [--requests 2000] [--concurrency 64]
        [--launcher plugin|instrument] [--shutdown abort|drain] [--work DIR]

``--shutdown abort`` stops vLLM its default way (EngineCore and Worker are killed right after
SIGTERM); ``drain`` passes ``--shutdown-timeout 30`` so they exit normally.
"""

from __future__ import annotations

import argparse
import collections
import csv
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import profiling_workdir  # noqa: E402
import workload  # noqa: E402
from build_tiny_model import ensure_model  # noqa: E402
from serve import VllmServer  # noqa: E402

DROP_PATTERNS = re.compile(r"spans were dropped|could not be written|dropped \d+ spans|"
                           r"span queue full|records? (were )?dropped", re.IGNORECASE)


def load_specs(count: int) -> list:
    return workload.make_requests(count, seed=11, prompt_words=(4, 12, 24, 40),
                                  output_tokens=(4, 8, 16, 32), id_prefix="load")


def sample_specs() -> list:
    return workload.make_requests(16, seed=12, prompt_words=(5, 15, 30), output_tokens=(12, 24),
                                  id_prefix="sample")


def serve_and_send(server: VllmServer, specs: list, concurrency: int) -> tuple:
    with server:
        started = time.perf_counter()
        results = workload.run(server.url, server.model_name, specs, concurrency, 600)
        figures = workload.summarize(results, time.perf_counter() - started)
        sample = workload.run(server.url, server.model_name, sample_specs(), 1)
    return results, figures, sample


def check_capture(prof_dir: Path, results: list, sample: list) -> list:
    """Problems found in the raw capture (empty when complete)."""
    problems = []
    records = profiling_workdir.read_records(prof_dir)
    names = collections.Counter(r.name for r in records)
    expected_requests = len(results) + len(sample)
    for name in ("httpReq", "httpRes", "Free"):
        if names[name] != expected_requests:
            problems.append(f"{names[name]} {name} records for {expected_requests} requests")
    steps = names["batchFrameworkProcessing"]
    for name in ("modelExec", "computing_logits", "sample", "KVCacheStatus"):
        if names[name] != steps:
            problems.append(f"{names[name]} {name} records for {steps} engine steps")
    print("records: " + ", ".join(f"{k} {v}" for k, v in sorted(names.items())))
    return problems


def check_requests(output_dir: Path, results: list) -> list:
    found = sorted(output_dir.rglob("request.csv"))
    if not found:
        return [f"no request.csv under {output_dir}"]
    with open(found[0], newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_rid = collections.defaultdict(list)
    for row in rows:
        by_rid[row["http_rid"]].append(row)
    problems = []
    missing = duplicated = wrong_tokens = 0
    for result in results:
        matching = by_rid.get(result.external_rid, [])
        if not matching:
            missing += 1
        elif len(matching) > 1:
            duplicated += 1
        elif (float(matching[0]["recv_token_size"]) != result.prompt_tokens
              or float(matching[0]["reply_token_size"]) != result.completion_tokens):
            wrong_tokens += 1
    print(f"request.csv: {len(rows)} rows; of {len(results)} client requests: missing {missing}, "
          f"duplicated {duplicated}, token counts differing {wrong_tokens}")
    if missing or duplicated or wrong_tokens:
        problems.append(f"request.csv: missing {missing}, duplicated {duplicated}, "
                        f"token counts differing {wrong_tokens}")
    return problems


def main(argv: list | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--launcher", choices=("plugin", "instrument"), default="plugin")
    parser.add_argument("--shutdown", choices=("abort", "drain"), default="abort")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the comparison run on vLLM without the tool")
    parser.add_argument("--work", type=Path)
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="load-test-"))
    model = ensure_model()
    specs = load_specs(args.requests)
    problems = []

    files = profiling_workdir.prepare(work / "profiled", enable=1)
    extra = ("--shutdown-timeout", "30") if args.shutdown == "drain" else ()
    server = VllmServer(model, work / "profiled", env=files.env(), extra_args=extra,
                        launcher=("opentelemetry-instrument",) if args.launcher == "instrument"
                        else ())
    print(f"profiled server ({args.launcher}, shutdown {args.shutdown}): {len(specs)} requests, "
          f"concurrency {args.concurrency}", flush=True)
    results, figures, sample = serve_and_send(server, specs, args.concurrency)
    print("client: {requests} requests, {failed} failed, {output_tok_per_s:.0f} output tok/s, "
          "E2E p50 {e2e_p50_ms:.0f} ms p99 {e2e_p99_ms:.0f} ms".format(**figures))
    if figures["failed"]:
        problems.append(f"{figures['failed']} requests failed")
    log = server.log_path.read_text(errors="replace")
    drops = [line for line in log.splitlines() if DROP_PATTERNS.search(line)]
    print(f"drop messages in the server log: {len(drops)}")
    problems += [f"server log: {line.strip()}" for line in drops[:5]]
    problems += check_capture(files.prof_dir, results, sample)

    output = work / "analysis"
    code, text = profiling_workdir.run_analyzer(files.prof_dir, output)
    print(text.rstrip())
    problems += check_requests(output, results + sample)

    if not args.no_baseline:
        plain = VllmServer(model, work / "plain", env={"VLLM_PLUGINS": "none-of-the-installed"})
        print("plain server: same workload", flush=True)
        base_results, _, base_sample = serve_and_send(plain, specs, args.concurrency)
        token_diff = sum((a.prompt_tokens, a.completion_tokens)
                         != (b.prompt_tokens, b.completion_tokens)
                         for a, b in zip(results, base_results))
        text_diff_load = sum(a.text != b.text for a, b in zip(results, base_results))
        text_diff_sample = sum(a.text != b.text for a, b in zip(sample, base_sample))
        print(f"compared with vLLM without the tool: token counts differ for {token_diff}; "
              f"sequential sample texts differ for {text_diff_sample} of {len(sample)}; "
              f"(informative) concurrent texts differ for {text_diff_load} of {len(results)}")
        if token_diff or text_diff_sample:
            problems.append(f"results changed: tokens {token_diff}, sample texts "
                            f"{text_diff_sample}")

    print("RESULT: " + ("PASS" if not problems else "FAIL"))
    for problem in problems:
        print(f"  - {problem}")
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
