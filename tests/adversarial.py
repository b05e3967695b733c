"""Model outputs that once stalled runs, with the guard reason each must get (None: the guard lets it through
and math-verify, or the call pool's timeout, must deal with it). Also a reward function for `data.reward`
that sends responses through this corpus and, for one of them, holds the GIL for minutes (pow(11, 889789789)
inside one C call): what a thread cannot stop and the call pool must."""
import zlib

from slide.tasks.answer import final_answer, math_verify_equal

CORPUS = [
    ("11^889789789", "huge_power"),
    ("9^9^9^9", "huge_power"),
    ("7^(8^9)", "huge_power"),
    ("100000!", "huge_factorial"),
    ("(" * 300 + "1" + ")" * 300, "nesting"),
    ("\\frac{" * 40 + "1" + "}{2}" * 40, "nesting"),
    ("7" * 1_000_000, "too_long"),
    ("1+" * 5000 + "1", "too_long"),
    ("12\x0034", "bad_text"),
    (b"\xff\xfe3889\xc3".decode("utf-8", "surrogateescape"), "bad_text"),
    (b"\xff\xfe3889\xc3".decode("utf-8", "replace"), None),
    ("\\binom{10^{9}}{5\\cdot 10^{8}}", "huge_factorial"),
    ("\\Gamma(10^{8})", "huge_factorial"),
    ("(x+1)^{10^{4}}", "huge_power"),
    ("x²+10⁶", None),
]
def pick(response: str) -> str | None:
    """The corpus entry a response stands for (by a hash stable across processes), None (a hang) for a third."""
    h = zlib.crc32(response.encode("utf-8", "surrogatepass"))
    return None if h % 3 == 0 else CORPUS[(h // 3) % len(CORPUS)][0]


def score(problem, response: str) -> float:
    """data.reward: math-verify compares the response's corpus entry with the row's answer; for one response
    in three it computes 11^889789789 exactly instead (minutes inside one C call)."""
    text = pick(response)
    if text is None:
        return float(pow(11, 889789789) == 3)
    return 1.0 if math_verify_equal(text, problem.answer) else 0.0
