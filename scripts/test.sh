#!/usr/bin/env bash
# Installs meshnet and runs every test: unit tests, and (as root) the tests against the real
# kernel in network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/pytest -q "$@"
