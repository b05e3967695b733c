"""Generated datasets, optionally "mixed quality": a share of rows with a wrong reference answer.

    slide data synth mixed.jsonl --tasks arithmetic:1-2,countdown:1 --n 500 --wrong-share 0.3 --seed 0
    slide data synth train.jsonl --tasks base --n 2000 --held-out test.jsonl --held-out-n 200

Each row is {prompt, answer, level, family, meta, corrupted}. Problems are drawn like a training run
draws them (a random spec item, then a random level of it), so duplicates can occur; `slide data dedup`
removes them. Then exactly round(F * N) rows, chosen at random, get a plausible wrong answer (off by a
small amount, or one digit changed; never the right one) and `corrupted: true`. For countdown the
reference is the target, so a corrupted row gets a wrong target in `answer` and `meta.target` alike
while its prompt still asks for the right one: a correct solution then scores 0 under the row's own
verifier. `corrupted` is for auditing an ablation; no filter reads it. The problems do not depend on
F: the same seed gives the same problems whatever share is corrupted.

`--held-out` writes a second file of distinct problems, drawn in turn from each (family, level) pair as a run
draws its held-out set (`slide.rl.data.eval_problems`), always with right answers; no training row is one of
them. A turn whose draw repeats an earlier problem is lost, so a family's small levels (base level 1 has 42
problems) get fewer rows, and fewer rows than asked for is possible (the summary line says how many).
"""
from __future__ import annotations

import math
import random
from collections.abc import Iterable

from slide.datatools.problems import FAMILY_META, problem_row
from slide.errors import UserError
from slide.rl.data import eval_problems
from slide.tasks import parse_task_specs
from slide.tasks.base import Problem
from slide.tasks.countdown import MAX_TARGET

SYNTH_FAMILIES = tuple(FAMILY_META)  # the generated single-turn families
_MAX_OFFSET = 10  # "off by a small amount": at most this much either way
_REDRAWS = 100  # draws of a held-out problem in a row before a training draw gives up
_CORRUPT_SALT = 7_919  # corruption draws from its own stream, so the problems never depend on the share


def _specs(spec: str, n: int, flag: str = "--n"):
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"{flag} must be a positive integer, got {n!r}")
    specs = parse_task_specs(spec)
    for task, _ in specs:
        if task.name not in SYNTH_FAMILIES:
            raise UserError(f"--tasks '{spec}': '{task.name}' cannot be synthesised "
                            f"(allowed: {', '.join(SYNTH_FAMILIES)}, each optionally ':LEVELS')")
    return specs


def held_out_problems(spec: str, n: int, seed: int = 0) -> list[Problem]:
    """Up to `n` distinct problems drawn in turn from the spec's (family, level) pairs, from the held-out stream."""
    return eval_problems(_specs(spec, n, "--held-out-n"), n, seed)


def synth_problems(spec: str, n: int, seed: int = 0, exclude: Iterable[Problem] = ()) -> list[Problem]:
    """`n` problems from a task spec of generated families (e.g. `arithmetic:1-2,countdown:1`), none of them one
    of `exclude` (a held-out set: a draw that hits one is drawn again)."""
    specs, avoid = _specs(spec, n), {p.key for p in exclude}
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        for _ in range(_REDRAWS):
            task, levels = specs[rng.randrange(len(specs))]
            p = task.generate(rng, levels[rng.randrange(len(levels))])
            if p.key not in avoid:
                break
        else:
            raise UserError(f"--tasks '{spec}': {_REDRAWS} draws in a row were all held-out problems; the held-out "
                            f"set covers (nearly) all of it: ask for fewer (--held-out-n) or add levels")
        out.append(p)
    return out


def wrong_number(value: int, rng: random.Random, lo: int = 0, hi: int | None = None) -> int:
    """A plausible wrong integer in [lo, hi]: `value` off by 1..10 either way, or one of its digits changed.
    Never equal to `value`; assumes [lo, hi] holds another integer within 10 of `value` (true for all callers)."""
    for _ in range(100):
        if rng.random() < 0.5:
            candidate = value + rng.choice([d for d in range(-_MAX_OFFSET, _MAX_OFFSET + 1) if d])
        else:
            digits = str(abs(value))
            i = rng.randrange(len(digits))
            # No leading zero: "07" is not how a wrong answer looks, and it would parse to a shorter number.
            choices = [d for d in "0123456789" if d != digits[i] and not (d == "0" and i == 0 and len(digits) > 1)]
            changed = digits[:i] + rng.choice(choices) + digits[i + 1:]
            candidate = int(changed) * (-1 if value < 0 else 1)
        if candidate != value and candidate >= lo and (hi is None or candidate <= hi):
            return candidate
    # Unreachable in practice (each try succeeds with probability > 1/4); keeps termination certain.
    return value + 1 if hi is None or value + 1 <= hi else value - 1


def wrong_text(text: str, rng: random.Random) -> str:
    """`text` with one character replaced by another of its kind (digit, lower or upper letter): never `text`."""
    i = rng.randrange(len(text))
    pool = next((chars for chars in ("0123456789", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ")
                 if text[i] in chars), "0123456789")
    return text[:i] + rng.choice([c for c in pool if c != text[i]]) + text[i + 1:]


def corrupt_row(row: dict, rng: random.Random) -> dict:
    """A copy of a generated row with a wrong reference answer and `corrupted: true`."""
    out = {**row, "meta": dict(row["meta"]), "corrupted": True}
    if row["family"] == "countdown":
        target = wrong_number(int(row["meta"]["target"]), rng, lo=1, hi=MAX_TARGET)
        out["answer"], out["meta"]["target"] = str(target), target
    elif row["answer"].isdigit():  # arithmetic, counting, word problems: results are non-negative integers
        out["answer"] = str(wrong_number(int(row["answer"]), rng, lo=0))
    else:  # text answers (strings, sorting, base): one character changed
        out["answer"] = wrong_text(row["answer"], rng)
    return out


def clean_rows(problems: list[Problem]) -> list[dict]:
    """Rows of generated problems with their right answers (`corrupted: false`)."""
    return [{**problem_row(p), "corrupted": False} for p in problems]


def synth_rows(spec: str, n: int, wrong_share: float = 0.0, seed: int = 0,
               exclude: Iterable[Problem] = ()) -> list[dict]:
    """`n` rows of `synth_problems(spec, n, seed, exclude)`, of which exactly round(wrong_share * n) are corrupted."""
    if not isinstance(wrong_share, (int, float)) or isinstance(wrong_share, bool) or not 0.0 <= wrong_share <= 1.0:
        raise UserError(f"--wrong-share must be a number in [0, 1], got {wrong_share!r}")
    rows = clean_rows(synth_problems(spec, n, seed, exclude))
    rng = random.Random(seed + _CORRUPT_SALT)
    wrong = math.floor(wrong_share * n + 0.5)  # round half up (Python's round() would round 2.5 to 2)
    for i in sorted(rng.sample(range(n), wrong)):
        rows[i] = corrupt_row(rows[i], rng)
    return rows
