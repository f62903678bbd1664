"""Shared by every test folder."""

import logging

# Tests read the package's log lines through pytest's caplog, a root handler. A handler of the
# package logger's own marks it as configured, so instrument() leaves its propagation alone
# (see instrumentor.ensure_visible_logging); a dedicated test covers the unconfigured case.
logging.getLogger("otel_vllm_ascend").addHandler(logging.NullHandler())
