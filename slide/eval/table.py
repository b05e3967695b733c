"""Print evaluation results as a table."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_eval(result: dict, title: str = "evaluation") -> None:
    k = result["k"]
    table = Table(title=title)
    for col in ("family", "level", "prompts", "pass@1", f"pass@{k}"):
        table.add_column(col, justify="right")
    for row in result["rows"]:
        table.add_row(row["family"], str(row["level"]), str(row["prompts"]), f"{row['pass@1']:.3f}",
                      f"{row[f'pass@{k}']:.3f}")
    s = result["summary"]
    table.add_row("all", "", str(sum(r["prompts"] for r in result["rows"])), f"{s['pass@1']:.3f}", f"{s[f'pass@{k}']:.3f}")
    Console().print(table)
