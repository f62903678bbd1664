"""The ``otel-vllm-ascend`` command.

``otel-vllm-ascend check-symbols [--symbols FILE] [--strict]`` loads the effective symbol file
(or FILE) exactly as a vLLM process would, imports every target against the installed packages
and prints one line per entry: whether it resolves here and, after ``->``, what it becomes (a
built-in handler, the default timer, your handler; its place in a chain)::

    #1   vllm.v1.core.sched.scheduler:Scheduler.schedule  resolves -> built-in schedule
    #10  vllm_ascend...:NPUModelRunner.execute_model      module not installed: ... -> built-in
         execute_model_runner, chained 1 of 2 (#10, #22)
    #13  vllm.model_executor.models.*:*.embed_multimodal  wildcard: 42 matches in 228 modules
         -> timer
         match: vllm.model_executor.models.aria:AriaForConditionalGeneration.embed_multimodal
    #14  vllm_ascend.utils:ProfileExecuteDuration.capture_async  skipped by version gate: ...

followed by the file's problems (entries that were dropped or repaired). Run it before
restarting a server with a new symbol file.

Exit codes: 0 the file loaded (entries may still be unresolved); 2 the file itself is invalid
(unreadable, not YAML, not a list); with ``--strict`` also 1 when the file has a problem or an entry
needs attention: an attribute or module missing inside an installed package, an import failure,
a duplicate, or a handler that falls back to the timer. Entries for a package that is not
installed at all (``vllm_ascend`` on a CPU machine) do not count.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional, TextIO

from otel_vllm_ascend.engine import (
    detect,
    handler_short_name,
    idle_entries,
    missing_records,
    outside_checked_lines,
)
from otel_vllm_ascend.symbol_check import RESOLVES, SKIPPED, WILDCARD, check_symbol_set
from otel_vllm_ascend.symbols import SymbolsError, load_symbols, resolve_symbols_path
from otel_vllm_ascend.versions import installed_vllm_version

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_INVALID_FILE = 2
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otel-vllm-ascend",
        description="OpenTelemetry tracing for vLLM / vLLM-Ascend: maintenance commands.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    check = commands.add_parser(
        "check-symbols",
        help="check a symbol YAML against the installed vLLM",
        description="Load the effective symbol YAML (or --symbols FILE) and report, per entry, "
                    "whether it resolves, its module is not installed, its attribute is "
                    "missing, it is skipped by its version gate, or its handler falls back to "
                    "the default timer.")
    check.add_argument("--symbols", metavar="FILE",
                       help="symbol file to check (default: the file a vLLM process would use)")
    check.add_argument("--vllm-version", metavar="VERSION",
                       help="judge version gates against VERSION instead of the installed vLLM")
    check.add_argument("--strict", action="store_true",
                       help="exit 1 if any entry has a problem or does not resolve")
    check.set_defaults(run=_check_symbols)
    return parser


def _check_symbols(args: argparse.Namespace, out: TextIO) -> int:
    version = args.vllm_version or installed_vllm_version()
    if args.symbols:
        path, why = args.symbols, "--symbols"
    else:
        resolved, why = resolve_symbols_path(version)
        path = str(resolved)
    print(f"symbol file: {path} ({why})", file=out)
    engine = detect(version)
    print(f"vLLM version: {version or 'not installed'}; engine: {engine.engine} "
          f"({engine.reason})", file=out)
    outside = outside_checked_lines(engine)
    if outside:
        print(f"note: {outside}", file=out)
    try:
        symbols = load_symbols(path, vllm_version=version)
    except SymbolsError as exc:
        print(f"INVALID FILE: {exc}", file=out)
        return EXIT_INVALID_FILE
    statuses = check_symbol_set(symbols)
    width = max((len(status.spec.symbol) for status in statuses), default=0)
    attention = 0
    for status in statuses:
        number = status.spec.source.rsplit("#", 1)[-1]
        text = status.status if not status.reason else f"{status.status}: {status.reason}"
        if status.becomes:
            text += f" -> {status.becomes}"
        print(f"#{number:<3} {status.spec.symbol:<{width}}  {text}", file=out)
        for match in status.matches:
            print(f"     match: {match}", file=out)
        if status.handler_note:
            print(f"     -> handler fallback: {status.handler_note}", file=out)
        if not status.ok:
            attention += 1
    resolved = sum(1 for status in statuses
                   if status.status == RESOLVES or (status.status == WILDCARD and status.matches))
    skipped = sum(1 for status in statuses if status.status == SKIPPED)
    print(f"{resolved} resolve, {skipped} skipped by version gate, {attention} need attention, "
          f"{len(symbols.problems)} file problems", file=out)
    for problem in symbols.problems:
        print(f"problem: {problem}", file=out)
    missing = missing_records(engine, [
        (handler_short_name(s.spec.handler), s.status in (RESOLVES, WILDCARD),
         s.reason or s.status) for s in statuses])
    idle = idle_entries(engine, [spec.symbol for spec in symbols.specs], missing)
    if idle:
        print(f"cannot fire: {idle}", file=out)
    for record in missing:
        print(f"missing record: {record.record}: {record.reason}", file=out)
    if not missing:
        print("every default record is available", file=out)
    if args.strict and (attention or symbols.problems):
        return EXIT_PROBLEMS
    return EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``otel-vllm-ascend``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    # The loader's warnings are printed as part of the report; keep the log quiet meanwhile.
    project_logger = logging.getLogger("otel_vllm_ascend")
    previous = project_logger.level
    project_logger.setLevel(logging.ERROR)
    try:
        return args.run(args, sys.stdout)
    finally:
        project_logger.setLevel(previous)


if __name__ == "__main__":
    sys.exit(main())
