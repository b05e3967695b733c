"""A task backed by a user's JSONL or Parquet file of {prompt, answer[, level]} rows.

Rows are numbered from 1: for JSONL the row number is the line number (blank lines are skipped
but still counted), so an error points at the line the user must edit.
"""
from __future__ import annotations

import json
import math
import os
import random
from typing import Any

from slide.errors import UserError
from slide.tasks.answer import exact_or_numeric, final_answer, math_verify_equal
from slide.tasks.base import Problem

EXTENSIONS = (".jsonl", ".parquet")
VERIFIERS = ("auto", "exact", "math")
_FIELDS_HELP = "(required: prompt, answer; optional: level)"


def _one_line(text: str, limit: int = 200) -> str:
    # Messages must stay on one line even when they quote a parser's multi-line complaint.
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_jsonl(path: str, label: str) -> list[tuple[int, Any]]:
    rows: list[tuple[int, Any]] = []
    # Read bytes and decode per line so a bad byte is reported with its line number.
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                raise UserError(f"{label} line {lineno}: not valid UTF-8 text") from None
            if not line.strip():
                continue
            try:
                rows.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise UserError(f"{label} line {lineno}: invalid JSON ({_one_line(exc.msg)})") from None
            except RecursionError:
                raise UserError(f"{label} line {lineno}: invalid JSON (nested too deeply)") from None
    return rows


def _read_parquet(path: str, label: str) -> list[tuple[int, Any]]:
    import pyarrow.parquet as pq  # lazily: only Parquet users pay the import

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise UserError(f"{label}: not a readable Parquet file ({_one_line(exc)})") from None
    return list(enumerate(table.to_pylist(), start=1))


def _answer_text(value: Any) -> str | None:
    """The answer as text, or None if the value is not an allowed answer."""
    if isinstance(value, bool):
        return None  # bool is an int subclass, but `true` is never a meant answer
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _validate(row: Any, where: str) -> dict:
    if not isinstance(row, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if prompt is None:
        raise UserError(f"{where}: missing field 'prompt' {_FIELDS_HELP}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError(f"{where}: field 'prompt' must be a non-empty string")
    if row.get("answer") is None:
        raise UserError(f"{where}: missing field 'answer' {_FIELDS_HELP}")
    answer = _answer_text(row["answer"])
    if answer is None:
        raise UserError(f"{where}: field 'answer' must be a non-empty string or a finite number")
    level = row.get("level")
    if level is None:  # absent, JSON null, or a Parquet null: the default level
        level = 1
    elif isinstance(level, bool) or not isinstance(level, int) or level < 1:
        raise UserError(f"{where}: field 'level' must be a positive integer, got {_one_line(repr(level), 40)}")
    meta = {k: v for k, v in row.items() if k not in ("prompt", "answer", "level")}
    return {"prompt": prompt, "answer": answer, "level": level, "meta": meta}


def load_rows(path: str) -> list[dict]:
    """Validated rows as dicts {prompt: str, answer: str, level: int, meta: dict of extra fields}."""
    label = path  # as the user wrote it, so two files with one name are told apart
    ext = os.path.splitext(path)[1].lower()
    if ext not in EXTENSIONS:
        raise UserError(f"data file '{path}': unknown extension '{ext}' (allowed: .jsonl, .parquet)")
    if not os.path.isfile(path):
        raise UserError(f"data file '{path}' not found")
    raw = _read_jsonl(path, label) if ext == ".jsonl" else _read_parquet(path, label)
    if not raw:
        raise UserError(f"{label}: no rows")
    return [_validate(row, f"{label} row {n}") for n, row in raw]


class DatasetTask:
    """Problems are rows of a file; `generate` samples a row of the requested level."""

    def __init__(self, path: str, name: str | None = None, verifier: str = "auto", reward=None) -> None:
        if verifier not in VERIFIERS:
            raise UserError(f"unknown verifier '{verifier}' for {path} (allowed: {', '.join(VERIFIERS)})")
        self.path = path
        self.verifier = verifier
        self.reward = reward  # a user's (problem, response) -> float (slide/tasks/user_reward.py), or None
        self.name = name or os.path.splitext(os.path.basename(path))[0]
        self._problems = [
            Problem(
                prompt=r["prompt"],
                answer=r["answer"],
                family=self.name,
                level=r["level"],
                reasoning="",
                solution=r["answer"],
                meta=r["meta"],
            )
            for r in load_rows(path)
        ]
        self._by_level: dict[int, list[Problem]] = {}
        for p in self._problems:
            self._by_level.setdefault(p.level, []).append(p)
        self.levels: tuple[int, ...] = tuple(sorted(self._by_level))

    def generate(self, rng: random.Random, level: int) -> Problem:
        rows = self._by_level.get(level)
        if not rows:
            allowed = ", ".join(str(lv) for lv in self.levels)
            raise UserError(f"dataset '{self.name}' has no rows at level {level} (levels: {allowed})")
        return rng.choice(rows)

    def problems(self) -> list[Problem]:
        """Every row, in file order (for evaluation)."""
        return list(self._problems)

    def verify(self, problem: Problem, response: str) -> float:
        if self.reward is not None:
            return float(self.reward(problem, response))
        pred = final_answer(response)
        if self.verifier == "exact":
            ok = exact_or_numeric(pred, problem.answer)
        elif self.verifier == "math":
            ok = math_verify_equal(pred, problem.answer)
        else:
            ok = exact_or_numeric(pred, problem.answer) or math_verify_equal(pred, problem.answer)
        return 1.0 if ok else 0.0
