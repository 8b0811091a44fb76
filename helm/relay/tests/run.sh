#!/usr/bin/env bash
# Renders the relay chart with scripts/helm-check (strict lint, every
# ci/*-values.yaml, Kubernetes schema validation) into a temporary directory,
# then asserts on the rendered manifests with test_rendered.py. Needs nothing
# outside the repository (the tools come from PyPI, see scripts/tools-venv).
#
#   bash helm/relay/tests/run.sh        (from anywhere inside the repository)
#
# Environment: RELAY_TOOLS_VENV (the tools' virtualenv, default
# ~/.cache/relay-tools/venv),
# KEEP_RENDERED=1 keeps the rendered YAML and prints where it is.
# Exit status 0 only when helm-check and every assertion pass; the last line
# is `N passed, M failed`.
set -uo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
chart=$(dirname "$here")
root=$(cd "$chart/../.." && pwd)
tools=$root/scripts

out=$(mktemp -d "${TMPDIR:-/tmp}/relay-chart.XXXXXX")
if [ "${KEEP_RENDERED:-0}" = 1 ]; then
  echo "rendered manifests kept in $out"
else
  trap 'rm -rf "$out"' EXIT
fi

if ! venv=$("$tools/tools-venv"); then
  echo "run.sh: could not install the check tools (scripts/tools-venv)" >&2
  echo "0 passed, 1 failed"
  exit 1
fi
export RELAY_TOOLS_VENV="$venv"

cd "$root" || exit 1
helm_status=0
"$tools/helm-check" "$chart" --out "$out" || helm_status=$?

# The tools' virtualenv has PyYAML (pinned).
py="$venv/bin/python"
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
