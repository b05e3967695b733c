"""Print evaluation results as tables: one evaluation, or two side by side (before/after)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table


def _cells(result: dict) -> dict[tuple[str, str], tuple[int, float, float | None]]:
    """(family, level) -> (prompts, pass@1, pass@k or None at k = 1), with an ("all", "") row last."""
    k, s = result["k"], result["summary"]
    pk = f"pass@{k}"
    cells = {(r["family"], str(r["level"])): (r["prompts"], r["pass@1"], r[pk] if k > 1 else None)
             for r in result["rows"]}
    cells[("all", "")] = (sum(r["prompts"] for r in result["rows"]), s["pass@1"], s[pk] if k > 1 else None)
    return cells


def print_eval(result: dict, title: str = "evaluation") -> None:
    k = result["k"]
    table = Table(title=title)
    for col in ("family", "level", "prompts", "pass@1", *([f"pass@{k}"] if k > 1 else [])):
        table.add_column(col, justify="right")
    for (family, level), (prompts, p1, pk) in _cells(result).items():
        table.add_row(family, level, str(prompts), f"{p1:.3f}", *([f"{pk:.3f}"] if pk is not None else []))
    Console().print(table)
    incidents = {k: v for k, v in result.items() if k.startswith("reward_") and v}
    if incidents:  # responses scored 0 without a verdict: verifier errors, timeouts, answers refused by the guard
        Console().print("scored 0 without a verdict: " + ", ".join(f"{k} {v}" for k, v in sorted(incidents.items())))


def print_before_after(before: dict, after: dict, labels: tuple[str, str], title: str) -> None:
    """pass@1 of two evaluations of the same prompts, per family and level, and the change in points."""
    a, b = _cells(before), _cells(after)
    table = Table(title=title)
    for col in ("family", "level", "prompts", f"{labels[0]} pass@1", f"{labels[1]} pass@1", "change (points)"):
        table.add_column(col, justify="right")
    for key, (prompts, p_before, _) in a.items():
        p_after = b[key][1] if key in b else float("nan")
        table.add_row(*key, str(prompts), f"{p_before:.3f}", f"{p_after:.3f}", f"{100 * (p_after - p_before):+.1f}")
    Console().print(table)
