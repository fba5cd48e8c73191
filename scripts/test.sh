#!/usr/bin/env bash
# Sets everything up (system packages, .venv, the emulator, the benchmark's tools) and
# runs the test suite, which includes a smoke run of the benchmark.
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --bench
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
