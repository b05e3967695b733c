"""A dataset row as a verifiable `Problem`, and the verifier that scores it.

    problems = row_problems(rows, "in.jsonl")      # one Problem per row, in order
    verify = row_verifiers()                       # family -> (problem, response) -> reward

A row with `family` arithmetic or countdown (as written by `slide data synth`) keeps the problem's
`meta` and is scored by that family's own verifier: a countdown row accepts any expression over
meta.numbers that reaches meta.target, not only the text of `answer`. Any other row is a plain
dataset row (family "dataset"), scored like slide.tasks.DatasetTask's default: exact or numeric match
of the final answer, or math-verify equivalence.
"""
from __future__ import annotations

from slide.errors import UserError
from slide.tasks.answer import exact_or_numeric, final_answer, math_verify_equal
from slide.tasks.base import Problem

DATASET = "dataset"  # the family of rows verified by their answer text
# Families whose rows are verified by the family itself, and the meta fields their verifier reads.
FAMILY_META = {"arithmetic": (), "countdown": ("numbers", "target"), "strings": (), "counting": (), "sorting": (),
               "base": (), "word": ()}


def answer_verify(problem: Problem, response: str) -> float:
    """DatasetTask's "auto" check: 1.0 iff the final answer equals `problem.answer` exactly, numerically or
    symbolically (math-verify)."""
    pred = final_answer(response)
    ok = exact_or_numeric(pred, problem.answer) or math_verify_equal(pred, problem.answer)
    return 1.0 if ok else 0.0


def row_verifiers() -> dict:
    """family -> verify(problem, response) for every family `row_problem` produces."""
    from slide.tasks import FAMILIES
    return {**{name: FAMILIES[name]().verify for name in FAMILY_META}, DATASET: answer_verify}


def problem_row(problem: Problem) -> dict:
    """The row that `row_problem` turns back into an equivalent problem (reasoning and solution are not kept)."""
    return {"prompt": problem.prompt, "answer": problem.answer, "level": problem.level,
            "family": problem.family, "meta": dict(problem.meta)}


def _unsupported_family(family) -> bool:
    """A family SLIDE knows but that this module cannot verify from a row (code, agentic ones)."""
    if not isinstance(family, str):
        return False
    from slide.agent.families import AGENT_FAMILIES  # lazily: slide.agent imports slide.tasks
    from slide.tasks import FAMILIES
    return family not in FAMILY_META and (family in FAMILIES or family in AGENT_FAMILIES)


def row_problem(row: dict, where: str = "row") -> Problem:
    """The Problem for one flat row (see io.read_rows); `where` names the row in errors."""
    family = row.get("family")
    answer = str(row["answer"])
    if family in FAMILY_META:
        meta = row.get("meta")
        need = FAMILY_META[family]
        if need and (not isinstance(meta, dict) or any(meta.get(k) is None for k in need)):
            fields = ", ".join(f"meta.{k}" for k in need)
            raise UserError(f"{where}: family '{family}' needs {fields} (as written by slide data synth); "
                            "remove 'family' to verify the row by its answer only")
        return Problem(prompt=row["prompt"], answer=answer, family=family, level=row["level"],
                       solution=answer, meta=dict(meta) if isinstance(meta, dict) else {})
    if _unsupported_family(family):
        raise UserError(f"{where}: rows of family '{family}' cannot be verified here "
                        f"(supported: {', '.join(FAMILY_META)}, or rows without 'family', checked by answer)")
    extra = {k: v for k, v in row.items() if k not in ("prompt", "answer", "level")}
    return Problem(prompt=row["prompt"], answer=answer, family=DATASET, level=row["level"], solution=answer, meta=extra)


def row_problems(rows: list[dict], label: str = "rows") -> list[Problem]:
    """One Problem per row, in order; errors name `label` and the row number (from 1)."""
    return [row_problem(row, f"{label} row {i}") for i, row in enumerate(rows, start=1)]
