"""Render scenario logs of the reliability suite as the markdown table of docs/RELIABILITY.md.

    python tests/reliability/report.py runs/reliability/scenarios.jsonl [runs/reliability/soak.jsonl]

With one log: a row per scenario with its figures. With a default-count log and a soak log: a row per
scenario with the `tried` and `lost` of each, and the figures of the first. Exits 1 if anything was lost.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def load(path: str) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def _figures(row: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in row.get("figures", {}).items())


def _label(rows: list[dict]) -> str:
    return "soak" if any(r["soak"] for r in rows) else "default"


def render(logs: list[list[dict]]) -> str:
    first = logs[0]
    labels = [_label(rows) for rows in logs]
    head = "| area | scenario | " + " | ".join(f"tried ({label})" for label in labels) + " | lost | figures"
    head += f" ({labels[0]} run) | seconds |" if len(logs) > 1 else " | seconds |"
    lines = [head, "|---|---|" + "---:|" * len(logs) + "---:|---|---:|"]
    by_key = [{(r["area"], r["scenario"]): r for r in rows} for rows in logs]
    for row in first:
        key = (row["area"], row["scenario"])
        found = [rows.get(key) for rows in by_key]
        tried = " | ".join(str(r["tried"]) if r else "—" for r in found)
        lost = sum(r["lost"] for r in found if r)
        seconds = " / ".join(str(r["seconds"]) for r in found if r)
        lines.append(f"| {row['area']} | {row['scenario']} | {tried} | {lost} | {_figures(row)} | {seconds} |")
    lines.append("")
    seeds = "; ".join(
        f"{label} run seed {sorted({r['seed'] for r in rows})[0]}" for label, rows in zip(labels, logs, strict=True)
    )
    lines.append(f"Seeds: {seeds}.")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: report.py SCENARIOS.jsonl [SOAK.jsonl]", file=sys.stderr)
        return 2
    logs = [load(path) for path in argv[1:]]
    print(render(logs))
    return 0 if all(row["lost"] == 0 for rows in logs for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
