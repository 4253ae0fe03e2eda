"""Render the scenario log of the reliability suite as the markdown table of docs/RELIABILITY.md.

    python tests/reliability/report.py runs/reliability/soak.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def render(rows: list[dict]) -> str:
    lines = [
        "| area | scenario | tried | lost | figures | seconds |",
        "|---|---|---:|---:|---|---:|",
    ]
    for row in rows:
        figures = ", ".join(f"{k} {v}" for k, v in row.get("figures", {}).items())
        lines.append(
            f"| {row['area']} | {row['scenario']} | {row['tried']} | {row['lost']} | {figures} | {row['seconds']} |"
        )
    seeds = sorted({row["seed"] for row in rows})
    lines.append("")
    lines.append(f"Seeds: {', '.join(map(str, seeds))}; counts: {'soak' if any(r['soak'] for r in rows) else 'default'}.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: report.py SCENARIOS.jsonl", file=sys.stderr)
        return 2
    rows = [json.loads(line) for line in Path(argv[1]).read_text(encoding="utf-8").splitlines() if line.strip()]
    print(render(rows))
    return 0 if all(row["lost"] == 0 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
