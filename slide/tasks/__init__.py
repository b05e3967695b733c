"""Verifiable task families and the `--tasks` spec parser.

Spec grammar: comma-separated items, each `FAMILY`, `FAMILY:LEVELS`, `PATH` or `PATH:LEVELS`, where
FAMILY is arithmetic, countdown, code (unit tests run in the bwrap sandbox), strings, counting, sorting,
base, word (slide/tasks/strings.py, counting.py, sorting.py, base_conversion.py, word_problems.py) or an
agentic family (calculator, function_call, python, lookup: multi-turn episodes with tools, see
slide/agent/families.py), PATH ends in .jsonl or .parquet, and LEVELS is `2`, `1-3` or `1+3`.
Examples: `arithmetic:1-3,countdown:1`, `data/gsm.jsonl`, `data/mix.parquet:2+3`.
"""
from __future__ import annotations

from slide.errors import UserError
from slide.tasks.answer import final_answer
from slide.tasks.arithmetic import Arithmetic
from slide.tasks.base import Problem, Task
from slide.tasks.base_conversion import BaseConversion
from slide.tasks.code import Code
from slide.tasks.countdown import Countdown
from slide.tasks.counting import Counting
from slide.tasks.dataset import EXTENSIONS, DatasetTask
from slide.tasks.sorting import Sorting
from slide.tasks.strings import Strings
from slide.tasks.word_problems import WordProblems

__all__ = [
    "Arithmetic",
    "Code",
    "Countdown",
    "DatasetTask",
    "Problem",
    "Task",
    "final_answer",
    "make_task",
    "parse_task_specs",
]

FAMILIES = {"arithmetic": Arithmetic, "countdown": Countdown, "code": Code, "strings": Strings, "counting": Counting,
            "sorting": Sorting, "base": BaseConversion, "word": WordProblems}
_ALLOWED = "allowed: arithmetic, countdown, code, strings, counting, sorting, base, word, calculator, function_call, python, lookup, or a .jsonl/.parquet path, each optionally ':LEVELS' like 2, 1-3 or 1+3"


def _is_path(text: str) -> bool:
    return text.lower().endswith(EXTENSIONS)


def _split_item(item: str) -> tuple[str, str | None]:
    """(family or path, levels text or None). A path may itself contain ':' (e.g. a drive letter)."""
    if _is_path(item):
        return item, None
    head, sep, tail = item.rpartition(":")
    if sep and head:
        return head, tail
    return item, None


def _parse_levels(text: str, item: str, available: tuple[int, ...]) -> tuple[int, ...]:
    shown = ", ".join(str(lv) for lv in available)
    bad = f"task '{item}': bad levels '{text}' (use 2, 1-3 or 1+3; available levels: {shown})"
    try:
        if "-" in text:
            lo_text, hi_text = text.split("-")
            lo, hi = int(lo_text), int(hi_text)
            if lo > hi:
                raise UserError(bad)
            levels = tuple(range(lo, hi + 1))
        else:
            levels = tuple(int(part) for part in text.split("+"))
    except ValueError:  # int() of junk, or not exactly one '-'
        raise UserError(bad) from None
    missing = [lv for lv in levels if lv not in available]
    if missing:
        raise UserError(f"task '{item}': level {missing[0]} not available (available levels: {shown})")
    # Keep the user's order but drop repeats, so `1+1` does not double-weight a level.
    return tuple(dict.fromkeys(levels))


def _task_for(name: str, item: str, reward=None) -> Task:
    if _is_path(name):
        return DatasetTask(name, reward=reward)
    family = FAMILIES.get(name.strip().lower())
    if family is None:
        from slide.agent.families import AGENT_FAMILIES  # here: slide.agent imports slide.tasks
        agentic = AGENT_FAMILIES.get(name.strip().lower())
        family = agentic.task if agentic else None
    if family is None:
        raise UserError(f"unknown task '{item}' ({_ALLOWED})")
    return family()


def _parse_item(item: str, reward=None) -> tuple[Task, tuple[int, ...]]:
    name, levels_text = _split_item(item)
    task = _task_for(name, item, reward)
    if levels_text is None:
        return task, tuple(task.levels)
    return task, _parse_levels(levels_text.strip(), item, tuple(task.levels))


def make_task(spec: str) -> Task:
    """The task for one item (`arithmetic`, `countdown`, or a data file path).

    A `:LEVELS` suffix is validated, then ignored (use `parse_task_specs` to get the levels).
    """
    item = spec.strip()
    if not item or "," in item:
        raise UserError(f"task '{spec}': expected exactly one task ({_ALLOWED})")
    return _parse_item(item)[0]


def parse_task_specs(spec: str, reward=None) -> list[tuple[Task, tuple[int, ...]]]:
    """Each item of a comma-separated spec as (task, levels to train on); data files are scored by `reward`
    (a user's function, slide/tasks/user_reward.py) when given."""
    items = [part.strip() for part in spec.split(",")]
    if not spec.strip() or any(not item for item in items):
        raise UserError(f"task spec '{spec}' has an empty item ({_ALLOWED})")
    return [_parse_item(item, reward) for item in items]
