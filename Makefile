# Every target does its own set-up: tools/test_env.sh builds (once) and reuses the test venv.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: env test test-fast lint demo bench clean compat compat-all test-sdk-oldest \
	test-pandas-oldest
# The older vLLM line `make test` also runs end to end (see docs/compatibility.md).
CI_VLLM := 0.11.0

env:
	bash tools/system_deps.sh
	bash tools/test_env.sh

lint: env
	$(PY) -m ruff check otel_vllm_ascend exporters analysis tests benchmarks tools

# Two tiers (README "Development"):
#   make test       everything: lint, unit, integration, end to end on a real `vllm serve`, then
#                   the end-to-end tests again on the older vLLM line (tools/compat.py).
#   make test-fast  the edit loop, under 2 minutes: lint plus every unit and integration test
#                   that needs neither vLLM (marker `vllm`, set in tests/conftest.py) nor a real
#                   server (tests/e2e). It needs no vLLM: any venv with `pip install -e '.[test]'`
#                   works, e.g. `make test-fast PY=/path/to/venv/bin/python` (then no env step).
test: lint
	$(PY) -m pytest tests -q
	bash tools/test_pandas_oldest.sh
	$(PY) tools/compat.py $(CI_VLLM) --no-record

FAST_DEPS := $(if $(filter $(VENV)/bin/python,$(PY)),env,)
test-fast: $(FAST_DEPS)
	$(PY) -m ruff check otel_vllm_ascend exporters analysis tests benchmarks tools
	$(PY) -m pytest tests/unit tests/integration -q -m "not vllm and not e2e"

# The suites without vLLM against the oldest pandas pyproject.toml accepts (a small venv of
# its own; `make test` runs it too, the test venv holds the newest).
test-pandas-oldest:
	bash tools/test_pandas_oldest.sh

# The suites against the oldest OpenTelemetry SDK pyproject.toml accepts (`make test`: newest).
test-sdk-oldest: env
	bash tools/test_sdk_oldest.sh $(PY)

# One vLLM line end to end in its own cached venv: make compat VLLM=0.9.1
compat: env
	$(PY) tools/compat.py $(VLLM)

compat-all: env
	$(PY) tools/compat.py --all

demo: env
	$(PY) tools/demo.py $(DEMO_ARGS)

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .ruff_cache demo-output
