"""Keep rows by what `slide data measure` found: verification, pass rate, response length.

    slide data filter measured.jsonl out.jsonl --verified --min-pass-rate 0.1 --max-pass-rate 0.9
    slide data filter measured.jsonl out.jsonl --drop-shortest 0.5      # GLM-4.5's SFT finding

The criteria apply in this order, each to the rows the previous ones kept: --verified (pass_rate > 0:
at least one of the k samples reproduced the reference answer, GLM's "verified pool"),
--min/--max-pass-rate (inclusive bounds), --min/--max-response-len (inclusive, mean tokens), and last
--drop-shortest F: the floor(F * n) rows with the shortest mean response among the n left (ties: the
earlier row goes first). Rows keep their order. `corrupted` and other audit fields are never read.
"""
from __future__ import annotations

import math

from slide.errors import UserError

PASS_RATE, RESPONSE_LEN = "pass_rate", "response_len_mean"


def drop_shortest(rows: list[dict], frac: float, field: str = RESPONSE_LEN) -> list[dict]:
    """`rows` without the floor(frac * len(rows)) with the smallest `field`, in their original order."""
    count = math.floor(frac * len(rows) + 1e-9)  # 0.29 * 100 is 28.999...: still 29
    # sorted() is stable: among equal lengths the earlier row is dropped first.
    dropped = set(sorted(range(len(rows)), key=lambda i: rows[i][field])[:count])
    return [row for i, row in enumerate(rows) if i not in dropped]


def _check_fraction(flag: str, value, hi_open: bool = False) -> None:
    if value is None:
        return
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or value > 1 or (hi_open and value == 1):
        allowed = "0 <= F < 1" if hi_open else "0 <= x <= 1"
        raise UserError(f"{flag} must be a number with {allowed}, got {value!r}")


def _check_length(flag: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                              not math.isfinite(value) or value < 0):
        raise UserError(f"{flag} must be a number >= 0 (tokens), got {value!r}")


def _check_fields(rows: list[dict], fields: list[str], label: str) -> None:
    for i, row in enumerate(rows, start=1):
        for name in fields:
            value = row.get(name)
            if value is None:
                raise UserError(f"{label} row {i}: no field '{name}' (measure the rows first: "
                                "slide data measure IN OUT --model DIR --k K)")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise UserError(f"{label} row {i}: field '{name}' must be a finite number, got {value!r}")


def filter_rows(rows: list[dict], *, verified: bool = False, min_pass_rate: float | None = None,
                max_pass_rate: float | None = None, min_response_len: float | None = None,
                max_response_len: float | None = None, drop_shortest_frac: float = 0.0,
                label: str = "rows") -> tuple[list[dict], list[tuple[str, int, int]]]:
    """(kept rows, [(criterion, kept, of), ...] for each criterion given, in the order applied).

    Raises a one-line UserError for a bad bound or a row lacking a needed field (`label` names the file).
    """
    _check_fraction("--min-pass-rate", min_pass_rate)
    _check_fraction("--max-pass-rate", max_pass_rate)
    _check_fraction("--drop-shortest", drop_shortest_frac, hi_open=True)
    _check_length("--min-response-len", min_response_len)
    _check_length("--max-response-len", max_response_len)
    if min_pass_rate is not None and max_pass_rate is not None and min_pass_rate > max_pass_rate:
        raise UserError(f"--min-pass-rate {min_pass_rate} is above --max-pass-rate {max_pass_rate}")
    if min_response_len is not None and max_response_len is not None and min_response_len > max_response_len:
        raise UserError(f"--min-response-len {min_response_len} is above --max-response-len {max_response_len}")

    steps = []  # (criterion, keep(row) or None for drop-shortest)
    if verified:
        steps.append(("verified", lambda r: r[PASS_RATE] > 0))
    if min_pass_rate is not None:
        steps.append((f"pass_rate>={min_pass_rate:g}", lambda r: r[PASS_RATE] >= min_pass_rate))
    if max_pass_rate is not None:
        steps.append((f"pass_rate<={max_pass_rate:g}", lambda r: r[PASS_RATE] <= max_pass_rate))
    if min_response_len is not None:
        steps.append((f"response_len>={min_response_len:g}", lambda r: r[RESPONSE_LEN] >= min_response_len))
    if max_response_len is not None:
        steps.append((f"response_len<={max_response_len:g}", lambda r: r[RESPONSE_LEN] <= max_response_len))
    if drop_shortest_frac:
        steps.append((f"drop-shortest {drop_shortest_frac:g}", None))
    if not steps:
        raise UserError("filter: give at least one of --verified, --min-pass-rate, --max-pass-rate, "
                        "--min-response-len, --max-response-len, --drop-shortest")

    needed = [PASS_RATE] if verified or min_pass_rate is not None or max_pass_rate is not None else []
    if min_response_len is not None or max_response_len is not None or drop_shortest_frac:
        needed.append(RESPONSE_LEN)
    _check_fields(rows, needed, label)

    report = []
    for name, keep in steps:
        before = len(rows)
        rows = drop_shortest(rows, drop_shortest_frac) if keep is None else [r for r in rows if keep(r)]
        report.append((name, len(rows), before))
    return rows, report
