#!/usr/bin/env bash
# Runs the suites that need no vLLM against the OLDEST pandas pyproject.toml accepts (the
# test venv holds the newest). A small venv of its own, cached like the test venv and keyed by
# the pins below and the project's dependency spec. Usage:
#   tools/test_pandas_oldest.sh [pytest args...]
# Keep PANDAS in step with the lower bound in pyproject.toml.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3.11}
command -v "$python" >/dev/null || python=python3
PANDAS=${PANDAS:-2.0.3}
NUMPY=${NUMPY:-1.26.4}  # pandas 2.0 predates numpy 2
cache=${OTEL_VLLM_CACHE:-$HOME/.cache/otel-vllm-ascend}
key=$( (cat "$0"; cat "$root/pyproject.toml"; echo "$PANDAS $NUMPY") | sha256sum | cut -c1-12)
venv=$cache/pandas-$PANDAS-$key
if [ ! -f "$venv/.ready" ]; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  printf 'pandas==%s\nnumpy==%s\n' "$PANDAS" "$NUMPY" >"$venv/constraints.txt"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -c "$venv/constraints.txt" -e "$root[test]"
  touch "$venv/.ready"
fi
cd "$root"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps -e "$root"
"$venv/bin/python" -c "import pandas, numpy; print('pandas', pandas.__version__, 'numpy', numpy.__version__)"
"$venv/bin/python" -m pytest tests/unit tests/integration -q -p no:cacheprovider \
  -m "not vllm and not e2e" "$@"
