#!/usr/bin/env python3
"""Write the "## Parameters" tables of charts/rakuten-serving/README.md from values.yaml.

Every key of values.yaml is documented once, by its `## @param <key> <description>` line (the
Bitnami convention); `## @section <title>` starts a table. The README's tables are generated
from them, so they cannot drift apart (tests/test_helm.py checks that they are in step).

    python3 scripts/chart-params.py          # rewrite the README section
    python3 scripts/chart-params.py --check  # exit 1 when the README is out of date
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "rakuten-serving"
HEADING = "## Parameters"


def value_at(values: dict, path: str):
    node = values
    for part in path.split("."):
        node = node[part]
    return node


def shown(value) -> str:
    if isinstance(value, dict) and value and any(isinstance(v, (dict, list)) for v in value.values()):
        return "see `values.yaml`"
    if isinstance(value, str):
        return f"`{value}`" if value else '`""`'
    return f"`{json.dumps(value)}`"


def tables(values_text: str) -> str:
    values = yaml.safe_load(values_text)
    out: list[str] = [HEADING, ""]
    for line in values_text.splitlines():
        if m := re.match(r"^\s*## @section (.+)$", line):
            out += [f"### {m.group(1).strip()}", "", "| Name | Description | Value |", "| --- | --- | --- |"]
        elif m := re.match(r"^\s*## @param (\S+) (.+)$", line):
            key, description = m.groups()
            description = description.replace("|", "\\|")
            out.append(f"| `{key}` | {description} | {shown(value_at(values, key))} |")
    text = "\n".join(out)  # then a blank line after every table
    return re.sub(r"(\|\n)(### )", r"\1\n\2", text) + "\n"


def render(readme: str, values_text: str) -> str:
    head, _, rest = readme.partition(HEADING)
    tail = rest[rest.index("\n## "):] if "\n## " in rest else ""
    return head + tables(values_text) + tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check; exit 1 when out of date")
    args = parser.parse_args(argv)
    readme_path = CHART / "README.md"
    readme = readme_path.read_text()
    wanted = render(readme, (CHART / "values.yaml").read_text())
    if args.check:
        if wanted != readme:
            print(f"{readme_path} is out of date: run python3 scripts/chart-params.py", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
