#!/usr/bin/env bash
# The whole test suite: unit, integration (podman), registry and boot (qemu) tests. Extra args go to pytest,
# e.g. ./scripts/test.sh -m "not boot".
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/pytest tests "$@"
