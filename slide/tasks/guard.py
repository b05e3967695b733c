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
    huge_power      a power whose value has more than MAX_DIGITS digits (by an upper bound, towers included), or
                    a bracketed symbolic base to a power above MAX_SYMBOLIC_DEGREE ((x+1)^10000)
    huge_factorial  a factorial, Gamma or binomial with more than MAX_DIGITS digits

The bound: every sub-expression gets an upper bound on log10 of its numeric magnitude: a number log10 of its
value (rounded up, at least log10 2), sums/products/juxtapositions the sum of their parts' bounds, a^b the bound
of a times the magnitude bound of |b|, n! Stirling's upper bound, C(n, k) <= min(2^n, n^k). Letters count 0
but make an expression symbolic: a symbolic exponent or factorial (e^{-x^2/2}, (a+b)!) is not expanded by
sympy and is let through. The numeric bound over-estimates, never under-estimates, so a numeric answer it
lets through has at most MAX_DIGITS digits; a correct answer is rejected only if its exact value is longer
than that (the task suites' reference answers all pass: tests/test_guard.py). Unicode digits ("x²") are
symbols here, not numbers. The call pool's timeout covers what the guard does not model.
"""
from __future__ import annotations

import math
import re

MAX_CHARS = 1000
MAX_DEPTH = 32
MAX_DIGITS = 100_000  # 2^100000 (30,103 digits) passes; 11^889789789 (~9e8) and 9^9^9 (~3.7e8) do not
MAX_SYMBOLIC_DEGREE = 1000  # (x+1)^N with a larger N: sympy's simplify expands it (N = 10^4: 5 s)

_TOKEN = re.compile(r"\d+(?:\.\d*)?|\.\d+|\*\*|\\[A-Za-z]+|\\.|[A-Za-z]|[(\[{]|[)\]}]|\^|!|\S", re.ASCII)
_OPEN, _CLOSE = "([{", ")]}"
_LOG2 = math.log10(2)
_BINOMIAL = ("\\binom", "\\dbinom", "\\tbinom")
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
    r"""Upper bounds over a lenient grammar of plain and LaTeX math. Each item gives (L, symbolic): L bounds
    log10 of its numeric magnitude (a number: its own, at least log10 2; a letter: 0), symbolic says that a
    letter occurs in it (sympy keeps x^N, 2^x and n! symbolic: nothing expands).

        seq     := item*                      (sums, products, juxtaposition: L adds up)
        item    := ('-'|'+')* atom '!'* ('^' item)?        (right-associative: 9^9^9 = 9^(9^9))
        atom    := NUMBER | LETTER | '(' seq ')' | '{' seq '}' | '[' seq ']' | \binom{n}{k} | \Gamma atom
                 | any other command or symbol (L 0: \frac, \left, \cdot, \sin, \pi: their arguments follow)
    Unbalanced brackets are tolerated (a closing bracket ends the innermost seq)."""

    def __init__(self, tokens: list[str]):
        self.t, self.i = tokens, 0

    def more(self, *toks: str) -> bool:
        return self.i < len(self.t) and (not toks or self.t[self.i] in toks)

    def run(self) -> None:
        while self.more():
            self.seq()
            self.i += 1  # a stray closing bracket at top level

    def seq(self) -> tuple[float, bool]:
        total, symbolic = 0.0, False
        while self.more() and self.t[self.i] not in _CLOSE:
            if self.t[self.i] in "+-*/=,;":
                self.i += 1
                continue
            value, sym = self.item()
            total, symbolic = total + value, symbolic or sym
            if total > MAX_DIGITS:
                raise _TooBig("huge_power")
        return total, symbolic

    def item(self) -> tuple[float, bool]:
        while self.more("+", "-"):
            self.i += 1
        if not self.more():
            return 0.0, False
        value, sym, group = self.atom()
        while self.more("!"):
            self.i += 1
            value, sym, group = *self.factorial(value, sym), False
        if not self.more("^", "**"):
            return value, sym
        self.i += 1
        exponent, exponent_sym = self.item()  # its own bound, towers included
        if exponent_sym:
            return value, True  # a symbolic exponent: nothing to expand
        n = _magnitude(exponent)
        if sym and group and n > MAX_SYMBOLIC_DEGREE:
            raise _TooBig("huge_power")  # (x+1)^N: simplify expands the polynomial
        if value * n > MAX_DIGITS:
            raise _TooBig("huge_power")
        return value * n, sym

    @staticmethod
    def factorial(log10_n: float, sym: bool) -> tuple[float, bool]:
        if sym:
            return log10_n, True
        n = _magnitude(log10_n)
        if n > 10 * MAX_DIGITS:  # also inf: n! has more than n digits for n >= 25
            raise _TooBig("huge_factorial")
        if n <= 2:
            return _LOG2, False
        # Stirling's upper bound: ln n! <= (n + 1/2) ln n - n + ln sqrt(2 pi) + 1/(12 n)
        value = ((n + 0.5) * math.log(n) - n + 0.5 * math.log(2 * math.pi) + 1 / (12 * n)) / math.log(10)
        if value > MAX_DIGITS:
            raise _TooBig("huge_factorial")
        return value, False

    def atom(self) -> tuple[float, bool, bool]:
        """(L, symbolic, is a bracketed group)."""
        tok = self.t[self.i]
        self.i += 1
        if tok in _OPEN:
            value, sym = self.seq()
            if self.more():
                self.i += 1  # its closing bracket
            return (max(value, _LOG2) if not sym else value), sym, True
        if tok[0] in "0123456789.":
            whole, _, frac = tok.partition(".")
            digits = whole.lstrip("0")
            if not digits:
                return _LOG2, False, False
            lead = int(digits[:15]) + (1 if frac.strip("0") or len(digits) > 15 else 0)  # an upper bound
            return max(math.log10(lead) + max(0, len(digits) - 15), _LOG2), False, False
        if tok in _BINOMIAL:
            (n, n_sym), (k, k_sym) = self.argument(), self.argument()
            if n_sym or k_sym:
                return n + k, True, False
            digits = min(_magnitude(n) * _LOG2, _magnitude(k) * n)  # C(n, k) <= 2^n and <= n^k
            if digits > MAX_DIGITS:
                raise _TooBig("huge_factorial")
            return max(digits, _LOG2), False, False
        if tok == "\\Gamma" and self.more():  # Gamma(n) = (n - 1)!
            return (*self.factorial(*self.atom()[:2]), False)
        if tok.isalpha():
            return 0.0, True, False  # a variable, or e: sympy keeps it symbolic
        return 0.0, False, False  # a command (\frac, \left, \cdot, \sin, \pi: its arguments follow), a symbol

    def argument(self) -> tuple[float, bool]:
        if not self.more() or self.t[self.i] in _CLOSE:
            return 0.0, False
        value, sym, _ = self.atom()
        return value, sym
