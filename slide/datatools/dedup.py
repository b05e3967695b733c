"""Drop rows whose prompt repeats an earlier one after normalisation; the first occurrence is kept.

    slide data dedup in.jsonl out.jsonl

Two prompts are the same when they agree after Unicode NFKC (full-width digits, ligatures and
no-break spaces become their plain forms), case folding (`ß` ~ `ss`) and whitespace collapsing
(runs of any whitespace become one space; leading and trailing whitespace is ignored). Answers are
not compared: a repeated prompt with a different answer is dropped too (the first answer stays).
"""
from __future__ import annotations

import unicodedata


def normalize_prompt(text: str) -> str:
    """The key two prompts must share to count as duplicates."""
    # NFKC again after casefold: folding can produce sequences that NFKC composes differently.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    return " ".join(folded.split())


def dedup_rows(rows: list[dict]) -> tuple[list[dict], int]:
    """(rows with the first of each normalised prompt, in order; how many were dropped)."""
    seen: set[str] = set()
    kept = []
    for row in rows:
        key = normalize_prompt(row["prompt"])
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)
