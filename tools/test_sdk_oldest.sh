#!/usr/bin/env bash
# Runs the unit and integration suites against the OLDEST OpenTelemetry release pyproject.toml
# accepts (the test venv itself holds the newest). The older API/SDK/OTLP/instrumentation
# packages go, without their dependencies, into a folder put first on PYTHONPATH; the test
# utilities stay the venv's (they are not a runtime dependency). Usage:
#   tools/test_sdk_oldest.sh [python] [pytest args...]     (python: default .venv/bin/python)
# Keep SDK and SDK_CONTRIB in step with the lower bounds in pyproject.toml.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${1:-$root/.venv/bin/python}
shift || true
SDK=${SDK:-1.43.0}
SDK_CONTRIB=${SDK_CONTRIB:-0.64b0}
target=${OTEL_VLLM_CACHE:-$HOME/.cache/otel-vllm-ascend}/otel-sdk-$SDK
if [ ! -d "$target/opentelemetry/sdk" ]; then
  "$python" -m pip install -q --no-deps --target "$target" \
    "opentelemetry-api==$SDK" "opentelemetry-sdk==$SDK" "opentelemetry-proto==$SDK" \
    "opentelemetry-exporter-otlp==$SDK" "opentelemetry-exporter-otlp-proto-common==$SDK" \
    "opentelemetry-exporter-otlp-proto-http==$SDK" "opentelemetry-exporter-otlp-proto-grpc==$SDK" \
    "opentelemetry-semantic-conventions==$SDK_CONTRIB" "opentelemetry-instrumentation==$SDK_CONTRIB"
fi
cd "$root"
PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" "$python" -c \
  "import opentelemetry.sdk.version as v; print('opentelemetry-sdk', v.__version__)"
PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" "$python" -m pytest tests/unit tests/integration \
  -q -p no:cacheprovider "$@"
