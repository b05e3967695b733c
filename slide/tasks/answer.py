"""Final-answer extraction and answer comparison shared by all verifiers.

Every function here is total: it returns a value for any string and never raises, because a
verifier must score arbitrary model output.
"""
from __future__ import annotations

import logging
import re
import threading
from fractions import Fraction

from slide.callpool import note
from slide.tasks.guard import check

_THINK_END = "</think>"
_STOP_TOKENS = ("<|endoftext|>", "<|user|>", "<|observation|>")
_BOXED = "\\boxed{"
# Plain decimal or fraction, nothing else: no exponent, no underscores, no thousands separators
# (Fraction() alone would accept "1e5" and "1_0", which a reference answer never means).
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:/\d+)?")
# Long digit strings are never a sensible answer and int() of huge strings is slow or raises.
_MAX_NUMBER_CHARS = 64
_MATH_TIMEOUT_S = 5  # math-verify's own SIGALRM bound (main thread only: a call-pool worker's calls)


def _strip_stop_tokens(text: str) -> str:
    # Repeat because a sampler may emit several stop tokens (and whitespace) in a row.
    text = text.rstrip()
    changed = True
    while changed:
        changed = False
        for tok in _STOP_TOKENS:
            if text.endswith(tok):
                text = text[: -len(tok)].rstrip()
                changed = True
    return text


def _last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` with balanced braces, or None."""
    end = len(text)
    start = text.rfind(_BOXED)
    while start != -1:
        depth = 1
        for i in range(start + len(_BOXED), end):
            if text[i] == "{":
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return text[start + len(_BOXED) : i]
        # Unbalanced: fall back to an earlier box. It cannot close after this one's start (the
        # unclosed brace keeps it open), so scanning stops there: linear time on adversarial text.
        end = start
        start = text.rfind(_BOXED, 0, start)
    return None


def final_answer(response: str) -> str:
    """The answer part of a response: after the last `</think>`, stop tokens stripped, `\\boxed{}` unwrapped."""
    idx = response.rfind(_THINK_END)
    text = response[idx + len(_THINK_END) :] if idx != -1 else response
    text = _strip_stop_tokens(text).strip()
    boxed = _last_boxed(text)
    return boxed.strip() if boxed is not None else text


def _parse_number(s: str) -> Fraction | None:
    s = s.strip()
    if not s or len(s) > _MAX_NUMBER_CHARS or not _NUMBER.fullmatch(s):
        return None
    try:
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def numbers_equal(a: str, b: str) -> bool:
    """True iff both are plain numbers (int, decimal, or p/q) with exactly the same value."""
    x = _parse_number(a)
    y = _parse_number(b)
    return x is not None and y is not None and x == y


def exact_or_numeric(pred: str, ref: str) -> bool:
    """Stripped string equality, or exact numeric equality."""
    return pred.strip() == ref.strip() or numbers_equal(pred, ref)


# Off the main thread math_verify runs without its SIGALRM timeout and warns once; SLIDE bounds every
# reward call itself (slide/rl/reward.py), so that warning is noise.
logging.getLogger("math_verify").setLevel(logging.ERROR)


def math_verify_equal(pred: str, ref: str) -> bool:
    """Symbolic equivalence via math_verify (e.g. `0.5` vs `\\frac{1}{2}`); False on any failure. Either side
    that would expand enormously (slide/tasks/guard.py) is refused before sympy sees it, and the refusal
    counted as `rejected/<reason>` for the call pool's caller."""
    if not pred.strip() or not ref.strip():
        return False
    try:
        for text in (pred, ref):
            reason = check(text)
            if reason is not None:
                note(f"rejected/{reason}")
                return False
        # Imported lazily: math_verify pulls in sympy, which is slow to import.
        from math_verify import parse, verify

        # math_verify's timeout uses SIGALRM, which only works on the main thread.
        timeout = _MATH_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
        gold = parse(ref, parsing_timeout=timeout)
        target = parse(pred, parsing_timeout=timeout)
        if not gold or not target:
            return False
        return bool(verify(gold, target, timeout_seconds=timeout))
    except Exception:  # noqa: BLE001 - sympy/antlr/timeouts raise many types; a verifier must not
        return False
