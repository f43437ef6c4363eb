"""Results as files: every measurement table is written as JSON (for programs) and Markdown (for people)."""

from __future__ import annotations

import json
from pathlib import Path


def markdown_table(rows: list[dict]) -> str:
    """A Markdown table with one column per key (in first-seen order); floats to 4 significant digits."""
    columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value) -> str:
        return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(column)) for column in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_results(rows: list[dict], stem: str | Path, title: str, preamble: str = "") -> list[Path]:
    """Write `stem.json` (the rows) and `stem.md` (title, preamble, table); returns both paths."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = stem.with_suffix(".json"), stem.with_suffix(".md")
    json_path.write_text(json.dumps(rows, indent=2) + "\n")
    markdown_path.write_text(f"# {title}\n\n" + (f"{preamble.strip()}\n\n" if preamble else "") + markdown_table(rows))
    return [json_path, markdown_path]
