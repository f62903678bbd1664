# Every target does its own set-up: tools/test_env.sh builds (once) and reuses the test venv.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: env test lint demo bench clean compat compat-all test-sdk-oldest
# The older vLLM line `make test` also runs end to end (see docs/compatibility.md).
CI_VLLM := 0.11.0

env:
	bash tools/system_deps.sh
	bash tools/test_env.sh

lint: env
	$(PY) -m ruff check otel_vllm_ascend exporters analysis tests benchmarks tools

test: lint
	$(PY) -m pytest tests -q
	$(PY) tools/compat.py $(CI_VLLM) --no-record

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
