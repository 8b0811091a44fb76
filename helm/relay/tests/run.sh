#!/usr/bin/env bash
# Renders the relay chart with helm-check (strict lint, every ci/*-values.yaml,
# Kubernetes schema validation) into a temporary directory, then asserts on the
# rendered manifests with test_rendered.py.
#
#   bash helm/relay/tests/run.sh        (from anywhere inside the repository)
#
# Environment: RELAY_TOOLS (default: ../shared/tools beside the repository),
# RELAY_TOOLS_VENV (the tools' virtualenv, default ~/.cache/relay-tools/venv),
# KEEP_RENDERED=1 keeps the rendered YAML and prints where it is.
# Exit status 0 only when helm-check and every assertion pass; the last line
# is `N passed, M failed`.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
chart=$(dirname "$here")
root=$(cd "$chart/../.." && pwd)
tools=${RELAY_TOOLS:-$root/../shared/tools}
venv=${RELAY_TOOLS_VENV:-$HOME/.cache/relay-tools/venv}

out=$(mktemp -d "${TMPDIR:-/tmp}/relay-chart.XXXXXX")
if [ "${KEEP_RENDERED:-0}" = 1 ]; then
  echo "rendered manifests kept in $out"
else
  trap 'rm -rf "$out"' EXIT
fi

if [ ! -x "$tools/helm-check" ]; then
  echo "run.sh: helm-check not found in $tools (set RELAY_TOOLS)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi

cd "$root" || exit 1
helm_status=0
"$tools/helm-check" "$chart" --out "$out" || helm_status=$?

# PyYAML: the system python when it has it, else the tools' virtualenv (which
# helm-check just created).
py=python3
if ! "$py" -c 'import yaml' 2>/dev/null; then py="$venv/bin/python"; fi

"$py" "$here/test_rendered.py" "$out" --tools "$tools" > "$out/.result" 2>&1
test_status=$?
summary=$(tail -n 1 "$out/.result")
sed '$d' "$out/.result"
if ! [[ $summary =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed$ ]]; then
  echo "run.sh: the test script did not finish (exit $test_status)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
passed=${BASH_REMATCH[1]} failed=${BASH_REMATCH[2]}
if [ "$helm_status" -ne 0 ]; then
  echo "FAIL helm-check (exit $helm_status): lint, render or schema validation"
  failed=$((failed + 1))
else
  passed=$((passed + 1))
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$test_status" -eq 0 ]
