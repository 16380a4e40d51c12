#!/usr/bin/env bash
# Set up and run every check: lint, types, and the whole test suite. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
scripts/bootstrap.sh
bin="$root/.venv/bin"
echo "== ruff"; "$bin/ruff" check src tests bench && "$bin/ruff" format --check src tests bench
echo "== mypy --strict src"; "$bin/mypy" --strict src
echo "== import contracts"; (cd "$root" && "$bin/lint-imports" --no-cache)
echo "== pytest"; "$bin/pytest" -q -n 2 "$@"
