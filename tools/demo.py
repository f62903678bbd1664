"""``make demo``: profile a real vLLM server the way msserviceprofiler's quick start does.

Steps, all on this machine and on loopback:

1. build (once, cached) a tiny Qwen2 model offline, unless ``--model`` names one;
2. write ``ms_service_profiler_config.json`` (``"enable": 0``) and
   ``service_profiling_symbols.yaml`` into the output folder, and export
   ``SERVICE_PROF_CONFIG_PATH`` / ``PROFILING_SYMBOLS_PATH``;
3. start ``opentelemetry-instrument vllm serve <model>`` and wait for ``/health``;
4. switch collection on while it runs: ``sed -i 's/"enable":\\s*0/"enable": 1/' <config>``;
5. send a bounded workload (mixed prompt and output lengths, several requests in flight);
6. stop the server cleanly, run ``otel-vllm-analyze`` on the capture and print where the
   CSV tables, capture databases, Chrome trace and report are.

Usage::

    make demo
    make demo DEMO_ARGS="--requests 200 --concurrency 16 --output /tmp/demo"
    python tools/demo.py --model ./my-model --port 8000 --otlp-endpoint http://127.0.0.1:4318
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import profiling_workdir  # noqa: E402
import workload  # noqa: E402
from build_tiny_model import ensure_model  # noqa: E402
from serve import ServerStartError, VllmServer  # noqa: E402

TOGGLE_PICKUP_S = 3.0


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def _parse(argv: list | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Profile a real vLLM server end to end.")
    parser.add_argument("--model", type=Path, help="model folder (default: the tiny model)")
    parser.add_argument("--port", type=int, help="server port on 127.0.0.1 (default: free)")
    parser.add_argument("--requests", type=int, default=64, help="requests to send (64)")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight (8)")
    parser.add_argument("--output", type=Path, default=Path("demo-output"),
                        help="work and output folder (demo-output); its old capture is replaced")
    parser.add_argument("--otlp-endpoint",
                        help="also forward spans over OTLP/HTTP, e.g. Jaeger's http://127.0.0.1:4318")
    return parser.parse_args(argv)


def _fresh_output(folder: Path) -> Path:
    folder = folder.resolve()
    for stale in ("prof", "analysis", "server.log", profiling_workdir.CONFIG_NAME):
        path = folder / stale
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _print_outputs(files: profiling_workdir.ProfilingFiles, analysis: Path) -> None:
    _say("capture databases:")
    for db in profiling_workdir.capture_files(files.prof_dir):
        print(f"    {db}")
    _say(f"analysis in {analysis}:")
    for path in sorted(p for p in analysis.rglob("*") if p.is_file()):
        print(f"    {path}")
    for summary in ("service_summary.csv", "request_summary.csv", "batch_summary.csv"):
        for path in sorted(analysis.rglob(summary)):
            _say(f"{path.name}:")
            print("    " + path.read_text().strip().replace("\n", "\n    "))


def main(argv: list | None = None) -> int:
    args = _parse(argv)
    output = _fresh_output(args.output)
    model = args.model.resolve() if args.model else ensure_model()
    _say(f"model {model}")

    files = profiling_workdir.prepare(output, enable=0)
    env = files.env()
    if args.otlp_endpoint:
        env.update({"OTEL_TRACES_EXPORTER": "ms_service,otlp",
                    "OTEL_EXPORTER_OTLP_ENDPOINT": args.otlp_endpoint,
                    "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"})
    for key, value in env.items():
        _say(f"export {key}={value}")

    server = VllmServer(model, output, port=args.port, env=env,
                        launcher=("opentelemetry-instrument",))
    _say(f"starting: {' '.join(server.command())}")
    _say(f"(server log: {server.log_path}; the first start takes up to a few minutes)")
    try:
        server.start()
    except ServerStartError as error:
        _say(str(error))
        return 1
    try:
        _say(f"healthy after {server.ready_after_s:.0f} s at {server.url}")
        _say(f"""collection on: sed -i 's/"enable":\\s*0/"enable": 1/' {files.config}""")
        profiling_workdir.set_enable(files.config, True)
        time.sleep(TOGGLE_PICKUP_S)
        specs = workload.make_requests(args.requests, seed=0)
        _say(f"sending {len(specs)} requests, {args.concurrency} at a time")
        started = time.perf_counter()
        results = workload.run(server.url, server.model_name, specs, args.concurrency)
        figures = workload.summarize(results, time.perf_counter() - started)
        workload.save(results, output / "client_requests.json")
        _say("client view: {requests} requests, {failed} failed, {output_tok_per_s:.0f} output "
             "tokens/s, TTFT p50 {ttft_p50_ms:.1f} ms, end-to-end p50 {e2e_p50_ms:.1f} ms "
             "p99 {e2e_p99_ms:.1f} ms".format(**figures))
    finally:
        _say("stopping the server")
        server.stop()

    if not profiling_workdir.capture_files(files.prof_dir):
        _say(f"no capture was written under {files.prof_dir}; see {server.log_path}")
        return 1
    analysis = output / "analysis"
    _say(f"otel-vllm-analyze --input-path {files.prof_dir} --output-path {analysis}")
    code, text = profiling_workdir.run_analyzer(files.prof_dir, analysis)
    print(text.rstrip())
    if code != 0:
        _say(f"the analyzer failed (exit {code})")
        return 1
    _print_outputs(files, analysis)
    return 0 if figures["failed"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
