"""What reading gathers besides the records: the :class:`ReadReport` of problems, and one
:class:`ProcessInfo` per (host, pid) with its Meta rows and role.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from otel_vllm_ascend.analysis.frame import ProcessInfo, RecordBuilder, guess_role


@dataclass
class ReadReport:
    """What reading found: files, rows, and one user message per problem."""

    files: list[str] = field(default_factory=list)
    rows: int = 0
    unparsable: int = 0
    problems: list[str] = field(default_factory=list)


def _process(processes: dict, host: str, pid: int, source: str) -> ProcessInfo:
    key = (host, pid)
    proc = processes.get(key)
    if proc is None:
        proc = processes[key] = ProcessInfo(host=host, pid=pid)
    if source not in proc.sources:
        proc.sources.append(source)
    return proc


def _apply_meta(proc: ProcessInfo, meta: dict[str, str]) -> None:
    proc.meta.update(meta)
    role = meta.get("role")
    if role:
        proc.role = str(role)
    rank = meta.get("dpRankId")
    if rank not in (None, ""):
        try:
            proc.dp_rank = int(float(rank))
        except ValueError:
            pass


def _complete_processes(builder: RecordBuilder,
                        processes: dict[tuple[str, int], ProcessInfo]) -> None:
    """Roles guessed from the record names where no Meta row gave one; then the DP ranks of
    workers that recorded none, from their EngineCore."""
    missing = [p for p in processes.values() if not p.role]
    if missing:
        names: dict[tuple[int, str], set] = {}
        cols = builder.columns
        for source, pid, name in zip(cols["source"], cols["pid"], cols["name"]):
            names.setdefault((pid, source), set()).add(name)
        for proc in missing:
            seen: set = set()
            for source in proc.sources:
                seen |= names.get((proc.pid, source), set())
            proc.role = guess_role(seen)
    _inherit_dp_ranks(processes)


def _inherit_dp_ranks(processes: dict[tuple[str, int], ProcessInfo]) -> None:
    """A worker without a rank of its own gets its parent's (Meta ``ppid``): the workers of a
    dense model's independent DP rank have a configuration of DP size 1, their EngineCore
    knows its rank."""
    for proc in processes.values():
        if proc.dp_rank is not None or proc.role != "worker":
            continue
        try:
            parent = processes.get((proc.host, int(float(proc.meta.get("ppid", "")))))
        except ValueError:
            continue
        if parent is not None and parent.role == "engine_core":
            proc.dp_rank = parent.dp_rank
