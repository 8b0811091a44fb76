#!/usr/bin/env python3
"""`helm lint --strict` and `helm template` of one chart, offline, through the
helm-python-sdk wheel (Helm's Go SDK in a Python package): no helm binary and
no cluster. Run with the python of scripts/tools-venv.

    helm_render.py CHART [-f VALUES.yaml ...] [--release NAME] [--namespace NS]
                   [--lint] [-o OUT.yaml]

Writes the rendered objects as multi-document YAML, each with a `# Source:`
line like `helm template` (templates starting with `_`, NOTES.txt and empty
output are left out). Exit 0 on success, 1 on a lint, schema or render error.
"""
import argparse
import sys

import helm_python
from helm_python import chart as helm_chart

SEVERITY = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}


def merge(into, update):
    """Helm's -f semantics: later files override, maps merge key by key."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            merge(into[key], value)
        else:
            into[key] = value
    return into


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("chart")
    ap.add_argument("-f", "--values", action="append", default=[])
    ap.add_argument("--release", default="relay")
    ap.add_argument("--namespace", default="default")
    ap.add_argument("--lint", action="store_true", help="helm lint --strict first")
    ap.add_argument("-o", "--output", default="-")
    args = ap.parse_args()

    values = {}
    for path in args.values:
        with open(path) as fh:
            merge(values, helm_chart.values_from_yaml(fh.read()))
    values = values or None

    if args.lint:
        report = helm_chart.lint(args.chart, values, strict=True, namespace=args.namespace)
        messages = report.get("messages") or []
        for m in messages:
            sys.stderr.write("[%s] %s: %s\n" % (SEVERITY.get(m["severity"], m["severity"]), m["path"], m["error"]))
        if report.get("errors") or any(m["severity"] >= 3 for m in messages):
            sys.stderr.write("lint: FAILED\n")
            return 1

    try:
        loaded = helm_chart.Chart.load(args.chart)
        loaded.validate_schema(values)  # values.schema.json, when there is one
        files = loaded.render(values=values, name=args.release, namespace=args.namespace, is_install=True)
    except helm_python.HelmError as e:
        sys.stderr.write("render error: %s: %s\n" % (type(e).__name__, e))
        return 1

    docs = []
    for path in sorted(files):
        body = files[path].strip("\n")
        name = path.rsplit("/", 1)[-1]
        if name.startswith("_") or name == "NOTES.txt" or not body.strip():
            continue
        docs.append("---\n# Source: %s\n%s\n" % (path, body))
    text = "".join(docs)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with open(args.output, "w") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
