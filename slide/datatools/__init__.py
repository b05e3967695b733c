"""Data quality tools for RL/SFT datasets: synthesise, measure, filter, deduplicate.

    slide data synth mixed.jsonl --tasks arithmetic:1-2 --n 500 --wrong-share 0.3
    slide data measure mixed.jsonl measured.jsonl --model runs/sft/final --k 8
    slide data filter measured.jsonl clean.jsonl --verified --drop-shortest 0.5
    slide data dedup clean.jsonl unique.jsonl

A dataset is a JSONL or Parquet file of rows {prompt, answer, level?, ...extra fields}; every verb
keeps the extra fields and writes a new file (never the input) atomically. Rows written by `synth`
also carry `family` and the problem's `meta`, so they are verified by their family's own verifier
(a countdown row accepts any expression that reaches its target), and `corrupted` (audit only: no
filter reads it).

| file | concept |
|---|---|
| `io.py` | read (validated by slide.tasks.dataset.load_rows) and atomic write |
| `problems.py` | a row <-> a verifiable `Problem`; the verifier of each row |
| `synth.py` | generated datasets with a share of wrong reference answers |
| `pass_rates.py` | k samples per prompt -> pass rate, pass@j, response length |
| `filters.py` | keep rows by measured pass rate / verification / response length |
| `dedup.py` | drop repeated prompts after normalisation |
| `cli.py` | the `slide data` verbs |
"""
from slide.datatools.dedup import dedup_rows, normalize_prompt
from slide.datatools.filters import drop_shortest, filter_rows
from slide.datatools.io import check_output, read_rows, write_rows
from slide.datatools.problems import answer_verify, problem_row, row_problem, row_problems, row_verifiers
from slide.datatools.synth import synth_problems, synth_rows, wrong_number

_LAZY = ("MEASURED_FIELDS", "group_stats", "measure", "with_measurements")


def __getattr__(name):
    # pass_rates.py imports torch and transformers: only on first use, so `slide --help` stays fast.
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module("slide.datatools.pass_rates"), name)
    raise AttributeError(f"module 'slide.datatools' has no attribute {name!r}")


__all__ = [
    "MEASURED_FIELDS",
    "answer_verify",
    "check_output",
    "dedup_rows",
    "drop_shortest",
    "filter_rows",
    "group_stats",
    "measure",
    "normalize_prompt",
    "problem_row",
    "read_rows",
    "row_problem",
    "row_problems",
    "row_verifiers",
    "synth_problems",
    "synth_rows",
    "with_measurements",
    "write_rows",
]
