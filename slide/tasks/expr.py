"""A safe, exact evaluator for countdown expressions: integers, + - * /, parentheses.

Hand-written tokenizer and recursive-descent parser so model output never reaches eval/ast.
Limits (length, literal size, nesting depth) bound the work done on adversarial input.
"""
from __future__ import annotations

from fractions import Fraction

MAX_CHARS = 200
MAX_DIGITS = 6
MAX_DEPTH = 20
_OPERATORS = "+-*/()"


class ExprError(ValueError):
    """The text is not an allowed expression (or divides by zero)."""


def _tokenize(text: str) -> list[str]:
    if len(text) > MAX_CHARS:
        raise ExprError(f"expression longer than {MAX_CHARS} characters")
    tokens: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if ch in " \t\n\r":
            i += 1
        elif ch in _OPERATORS:
            tokens.append(ch)
            i += 1
        elif "0" <= ch <= "9":  # ASCII only: str.isdigit() would accept e.g. superscripts
            j = i
            while j < len(text) and "0" <= text[j] <= "9":
                j += 1
            if j - i > MAX_DIGITS:
                raise ExprError(f"number with more than {MAX_DIGITS} digits")
            tokens.append(text[i:j])
            i = j
        else:
            raise ExprError(f"character {ch!r} not allowed")
    if not tokens:
        raise ExprError("empty expression")
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ; factor := INT | '(' expr ')'"""

    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise ExprError("unexpected end of expression")
        self.pos += 1
        return tok

    def expr(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        return value

    def term(self) -> Fraction:
        value = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            rhs = self.factor()
            if op == "*":
                value = value * rhs
            elif rhs == 0:
                raise ExprError("division by zero")
            else:
                value = value / rhs
        return value

    def factor(self) -> Fraction:
        tok = self.take()
        if tok == "(":
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExprError(f"parentheses nested deeper than {MAX_DEPTH}")
            value = self.expr()
            if self.take() != ")":
                raise ExprError("expected ')'")
            self.depth -= 1
            return value
        if tok.isdigit():
            return Fraction(int(tok))
        # Covers unary minus/plus and stray operators: the grammar has no signed literals.
        raise ExprError(f"unexpected {tok!r}")


def evaluate(text: str) -> Fraction:
    """Exact value of `text`; raises ExprError for anything outside the grammar."""
    parser = _Parser(_tokenize(text))
    value = parser.expr()
    if parser.peek() is not None:
        raise ExprError(f"unexpected {parser.peek()!r}")
    return value


def numbers_used(text: str) -> list[int]:
    """The integer literals of `text`, in order; raises ExprError on disallowed characters."""
    return [int(tok) for tok in _tokenize(text) if tok.isdigit()]
