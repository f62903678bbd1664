# Every target does its own set-up: tools/test_env.sh builds (once) and reuses the test venv.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: env test lint demo bench clean

env:
	bash tools/system_deps.sh
	bash tools/test_env.sh

lint: env
	$(PY) -m ruff check otel_vllm_ascend exporters analysis tests benchmarks tools

test: lint
	$(PY) -m pytest tests -q

demo: env
	$(PY) tools/demo.py $(DEMO_ARGS)

clean:
	rm -rf .venv build dist *.egg-info .pytest_cache .ruff_cache demo-output
