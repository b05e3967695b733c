"""Print evaluation results as tables: one evaluation, or two side by side (before/after)."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from slide.eval.chance import chance_line


def _columns(result: dict) -> list[str]:
    """The score columns of a result: pass@j for each j scored (1 first), then avg@n when n > 1."""
    ks = result.get("ks") or sorted({1, result["k"]})  # results written before `ks` carried 1 and k only
    n = result.get("n", result["k"])
    return [f"pass@{j}" for j in ks] + ([f"avg@{n}"] if f"avg@{n}" in result["summary"] else [])


def _cells(result: dict) -> dict[tuple[str, str], tuple[int, list[float]]]:
    """(family, level) -> (prompts, the scores of _columns), with an ("all", "") row last."""
    cols, s = _columns(result), result["summary"]
    cells = {(r["family"], str(r["level"])): (r["prompts"], [r[c] for c in cols]) for r in result["rows"]}
    cells[("all", "")] = (sum(r["prompts"] for r in result["rows"]), [s[c] for c in cols])
    return cells


def print_eval(result: dict, title: str = "evaluation") -> None:
    table = Table(title=title + (f" ({result['n']} samples per problem)" if result.get("n", 1) > 1 else ""))
    for col in ("family", "level", "prompts", *_columns(result)):
        table.add_column(col, justify="right")
    for (family, level), (prompts, scores) in _cells(result).items():
        table.add_row(family, level, str(prompts), *(f"{v:.3f}" for v in scores))
    Console().print(table)
    s = result["summary"]
    if "chance_pass@1" in s:  # evaluate(chance=True): what the same answers score against other prompts' problems
        Console().print(chance_line(s))
    incidents = {k: v for k, v in result.items() if k.startswith("reward_") and v}
    if incidents:  # responses scored 0 without a verdict: verifier errors, timeouts, answers refused by the guard
        Console().print("scored 0 without a verdict: " + ", ".join(f"{k} {v}" for k, v in sorted(incidents.items())))


def print_before_after(before: dict, after: dict, labels: tuple[str, str], title: str) -> None:
    """pass@1 of two evaluations of the same prompts, per family and level, and the change in points."""
    a, b = _cells(before), _cells(after)
    table = Table(title=title)
    for col in ("family", "level", "prompts", f"{labels[0]} pass@1", f"{labels[1]} pass@1", "change (points)"):
        table.add_column(col, justify="right")
    for key, (prompts, (p_before, *_)) in a.items():
        p_after = b[key][1][0] if key in b else float("nan")
        table.add_row(*key, str(prompts), f"{p_before:.3f}", f"{p_after:.3f}", f"{100 * (p_after - p_before):+.1f}")
    Console().print(table)
    luck = [r["summary"].get("chance_pass@1") for r in (before, after)]
    if None not in luck:  # the same answers scored against other prompts' problems: what guessing reaches
        Console().print(f"chance: {labels[0]} {luck[0]:.3f}, {labels[1]} {luck[1]:.3f}"
                        + "".join(f"  [{label} lucky: mostly guesses]" for label, r in zip(labels, (before, after))
                                  if r["summary"].get("lucky")))
