"""The scale smoke test's rules file: the real deploy/prometheus/rules/mcserve.yml with one alert's ``for:`` shortened.

    python3 scripts/scale_rules.py --alert McserveApiDown --for 2s --out WORK/rules.yml

A text rewrite of that one rule's ``for:`` line (every other rule, and the rest of that one, byte for byte
the real file), so the test fires the very rule production runs, only sooner. Standard library only; exit 1
if the alert or its ``for:`` is not found.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

REAL = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "rules" / "mcserve.yml"
ALERT = re.compile(r"^\s*-\s*alert:\s*(\S+)\s*$")
FOR = re.compile(r"^(\s*for:\s*)(\S+)(\s*)$")


def shorten(text: str, alert: str, duration: str) -> tuple[str, str]:
    """``text`` with ``alert``'s ``for:`` set to ``duration``; also the value it had."""
    lines = text.splitlines(keepends=True)
    current = None
    for i, line in enumerate(lines):
        match = ALERT.match(line)
        if match:
            current = match.group(1)
            continue
        found = FOR.match(line)
        if current == alert and found:
            lines[i] = f"{found.group(1)}{duration}{found.group(3)}"
            return "".join(lines), found.group(2)
    raise ValueError(f"no `for:` of alert {alert} in the rules file")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rules", type=Path, default=REAL)
    ap.add_argument("--alert", default="McserveApiDown")
    ap.add_argument("--for", dest="duration", default="2s")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        text, was = shorten(args.rules.read_text(), args.alert, args.duration)
    except ValueError as exc:
        print(f"scale_rules: {exc}", file=sys.stderr)
        return 1
    args.out.write_text(text)
    print(f"{args.out}: {args.alert} for: {was} -> {args.duration} (rest as {args.rules.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
