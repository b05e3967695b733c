"""Cheap checks before expensive work: answers that would expand enormously never reach sympy.

    check("11^889789789")      # "huge_power": 11 to that power has ~9e8 digits
    check("\\frac{1}{2}")      # None: fine, hand it to math-verify

math-verify turns an answer into a sympy expression, and sympy evaluates integer powers and factorials
exactly, inside single C calls that hold the GIL for minutes (11^889789789) or forever (9^9^9^9). The call
pool (slide/callpool.py) kills such a call at its timeout; this guard refuses the common cases in
microseconds first, so they cost nothing and are counted by reason:

    too_long        more than MAX_CHARS characters
    bad_text        NUL or other control characters, or unpaired surrogates (invalid UTF-8 decoded leniently)
    nesting         brackets nested deeper than MAX_DEPTH (sympy and the LaTeX parser recurse per level)
    huge_power      a power whose value has more than MAX_DIGITS digits (by an upper bound, towers included)
    huge_factorial  a factorial with more than MAX_DIGITS digits

The bound: every sub-expression gets an upper bound on log10 of its magnitude (at least log10 2): a number
log10 of its value (rounded up), a letter or command log10 4 (e and pi are below 4), sums/products/juxtapositions the sum of their parts' bounds, a^b the bound of a
times the magnitude bound of |b|, n! Stirling's upper bound. It over-estimates, never under-estimates, so anything
it lets through is at most MAX_DIGITS digits; a correct answer is rejected only if its exact value is
longer than that (the task suites' reference answers all pass: tests/test_guard.py).
"""
from __future__ import annotations

import math
import re

MAX_CHARS = 1000
MAX_DEPTH = 32
MAX_DIGITS = 100_000  # 2^100000 (30,103 digits) passes; 11^889789789 (~9e8) and 9^9^9 (~3.7e8) do not

_TOKEN = re.compile(r"\d+(?:\.\d*)?|\.\d+|\*\*|\\[A-Za-z]+|\\.|[A-Za-z]|[(\[{]|[)\]}]|\^|!|\S", re.ASCII)
_OPEN, _CLOSE = "([{", ")]}"
_LOG2 = math.log10(2)
_SYMBOL = math.log10(4)  # a letter or command: e and pi are below 4 (a variable stays symbolic in sympy)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff]")


class _TooBig(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def check(text: str) -> str | None:
    """None if `text` is safe to hand to sympy, else the reason it is not (see the module docstring)."""
    if len(text) > MAX_CHARS:
        return "too_long"
    if _CONTROL.search(text):
        return "bad_text"
    tokens = _TOKEN.findall(text)
    depth = 0
    for t in tokens:
        depth += t in _OPEN
        depth -= t in _CLOSE
        if depth > MAX_DEPTH:
            return "nesting"
    try:
        _Bound(tokens).run()
    except _TooBig as e:
        return e.reason
    except RecursionError:  # a power tower hundreds of levels high (brackets are bounded above)
        return "nesting"
    return None


def _magnitude(log10: float) -> float:
    """10 ** log10, as a float; inf past the float range (callers compare it with MAX_DIGITS)."""
    return math.inf if log10 > 300 else 10.0**log10


class _Bound:
    """Upper bounds on log10 |value| over a lenient grammar of plain and LaTeX math:

        seq     := item*                      (sums, products, commands and juxtaposition: bounds add)
        item    := ('-'|'+')* atom '!'* ('^' power)?
        power   := ('-'|'+')* atom '!'* ('^' power)?     (right-associative: 9^9^9 = 9^(9^9))
        atom    := NUMBER | LETTER | '(' seq ')' | '{' seq '}' | '[' seq ']' | anything else (bound log10 2)
    Unbalanced brackets are tolerated (a closing bracket ends the innermost seq)."""

    def __init__(self, tokens: list[str]):
        self.t, self.i = tokens, 0

    def run(self) -> float:
        total = 0.0
        while self.i < len(self.t):
            total += self.seq()
            self.i += 1  # a stray closing bracket at top level
        return total

    def seq(self) -> float:
        total = 0.0
        while self.i < len(self.t) and self.t[self.i] not in _CLOSE:
            if self.t[self.i] in "+-*/=,;":
                self.i += 1
                continue
            total += self.item()
            if total > MAX_DIGITS:
                raise _TooBig("huge_power")
        return total

    def item(self) -> float:
        while self.i < len(self.t) and self.t[self.i] in "+-":
            self.i += 1
        if self.i >= len(self.t):
            return 0.0
        base = self.atom()
        while self.i < len(self.t) and self.t[self.i] == "!":
            self.i += 1
            base = self.factorial(base)
        if self.i < len(self.t) and self.t[self.i] in ("^", "**"):
            self.i += 1
            exponent = self.item()  # the exponent's own bound, towers included
            value = base * _magnitude(exponent)
            if value > MAX_DIGITS:
                raise _TooBig("huge_power")
            return value
        return base

    @staticmethod
    def factorial(log10_n: float) -> float:
        n = _magnitude(log10_n)
        if n > 10 * MAX_DIGITS:  # also inf: n! has more than n digits for n >= 25
            raise _TooBig("huge_factorial")
        if n <= 2:
            return _LOG2
        # Stirling's upper bound: ln n! <= (n + 1/2) ln n - n + ln sqrt(2 pi) + 1/(12 n)
        value = ((n + 0.5) * math.log(n) - n + 0.5 * math.log(2 * math.pi) + 1 / (12 * n)) / math.log(10)
        if value > MAX_DIGITS:
            raise _TooBig("huge_factorial")
        return value

    def atom(self) -> float:
        tok = self.t[self.i]
        self.i += 1
        if tok in _OPEN:
            inner = self.seq()
            if self.i < len(self.t):
                self.i += 1  # its closing bracket
            return max(inner, _LOG2)
        if tok[0].isdigit() or tok[0] == ".":
            whole, _, frac = tok.partition(".")
            digits = whole.lstrip("0")
            if not digits:
                return _LOG2
            lead = int(digits[:15]) + (1 if frac.strip("0") or len(digits) > 15 else 0)  # an upper bound
            return max(math.log10(lead) + max(0, len(digits) - 15), _LOG2)
        return _SYMBOL  # a letter, a command (\frac, \pi, \cdot: its arguments are the atoms that follow), a symbol  # a letter, a command (\frac, \pi, \cdot: its arguments are the atoms that follow), a symbol
