"""Miniature pre-training corpora the project builds offline, on any machine with Python, as JSONL (`text` field).

    builtin:code          the Python standard library's own .py files, one file a document
    builtin:text          natural language: the standard library's docstrings, one module's a document
    builtin:repo          repo-level documents: one package's files in one context, after a generated description,
                          an issue and a change in diff format (GLM's repo-level mid-training data)
    builtin:reasoning     synthetic reasoning traces: worked solutions of slide/tasks' generators in the chat layout
    builtin:needle:MAX    key-value retrieval documents up to MAX tokens (the long-context stage): a haystack of
                          lowercase filler words with a needle line `KVV` (one capital letter, two digits) every
                          ~20 tokens (1 to that many in training documents), then questions `?K` about every
                          key, answered in place but the last (the eval: ~20 tokens a needle, one question)
    builtin:copy          content-copy documents: 24 random letters and digits, `|`, 0-40 more, `|`, the 24 again
                          (only an induction head predicts the copy: what needle retrieval needs first)

A source path `builtin:NAME` is built once into `corpora_dir/NAME.jsonl` and reused; the same seed gives the same
file on every machine with the same Python.
"""
from __future__ import annotations

import ast
import difflib
import json
import os
import random
import string
import sysconfig
from pathlib import Path

from slide.errors import UserError

BUILTIN = "builtin:"
MAX_CODE_CHARS = 12_000  # longer source files are left out (a tiny model's contexts are a few hundred tokens)


def _ascii(text: str) -> str:
    """The built-in tokenizer's characters: non-ASCII becomes '?'."""
    return "".join(c if c in "\n\t" or 32 <= ord(c) < 127 else "?" for c in text)


def _stdlib_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idlelib", "site-packages", "dist-packages", "lib2to3", "__pycache__", "turtledemo"}
    return sorted(p for p in root.rglob("*.py") if not skip & set(p.relative_to(root).parts))


def code_docs(limit: int = 400) -> list[str]:
    out = []
    for p in _stdlib_files():
        text = p.read_text(errors="replace")
        if 200 <= len(text) <= MAX_CODE_CHARS:
            out.append(_ascii(text))
        if len(out) == limit:
            break
    return out


def _docstrings(tree: ast.AST) -> list[str]:
    nodes = [n for n in ast.walk(tree) if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef))]
    return [d for n in nodes if (d := ast.get_docstring(n)) and len(d) >= 80]


def text_docs(limit: int = 400) -> list[str]:
    out = []
    for p in _stdlib_files():
        try:
            parts = _docstrings(ast.parse(p.read_text(errors="replace")))
        except SyntaxError:
            continue
        if parts:
            out.append(_ascii("\n\n".join(parts))[:MAX_CODE_CHARS])
        if len(out) == limit:
            break
    return out


def _describe(name: str, files: dict[str, str], rng: random.Random) -> str:
    """A generated description, issue and change for one package: what a repository's metadata adds to its files."""
    defs = {rel: [n.name for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
            for rel, src in files.items()}
    rel = rng.choice(sorted(r for r in files if defs[r]))
    target = rng.choice(defs[rel])
    lines = files[rel].splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if f"def {target}" in line or f"class {target}" in line)
    indent = len(lines[at]) - len(lines[at].lstrip()) + 4
    changed = lines[:at + 1] + [" " * indent + f"# {target}: see the issue above\n"] + lines[at + 1:]
    diff = "".join(difflib.unified_diff(lines, changed, f"a/{rel}", f"b/{rel}", n=1))
    summary = ", ".join(f"{r} ({len(d)} definitions)" for r, d in defs.items())
    return (f"# repository: {name}\n{len(files)} files: {summary}\n\n"
            f"## issue: explain {target} in {rel}\nReaders of {rel} ask what {target} is for.\n\n"
            f"## change\n{diff}\n")


def repo_docs(limit: int = 60, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    packages = sorted({p.parent for p in _stdlib_files() if p.name == "__init__.py"})
    for pkg in packages:
        files = {str(p.relative_to(pkg.parent)): p.read_text(errors="replace") for p in sorted(pkg.glob("*.py"))}
        files = {r: s for r, s in files.items() if len(s) <= MAX_CODE_CHARS}
        try:
            head = _describe(pkg.name, files, rng)
        except (SyntaxError, IndexError, StopIteration):
            continue  # a package without definitions to describe
        body = "".join(f"\n=== {r} ===\n{s}" for r, s in files.items())
        out.append(_ascii(head + body)[:4 * MAX_CODE_CHARS])
        if len(out) == limit:
            break
    return out


def held_out_prompts(spec: str, count: int = 1000) -> list:
    """The held-out problems SFT and RL evaluate on (seed 0) for `spec` and for each of its task:level pairs alone
    (slide demo's `arithmetic:2` is one): a pair's first N held-out problems are the same for any N <= count."""
    from slide.rl.data import eval_problems
    from slide.tasks import parse_task_specs
    specs = parse_task_specs(spec)
    out = eval_problems(specs, count, 0)
    for task, levels in specs:
        for level in levels:
            out += eval_problems([(task, (level,))], count, 0)
    return out


def reasoning_docs(tok, count: int = 2000, seed: int = 0, spec: str = "arithmetic:1-3,countdown:2-3") -> list[str]:
    """Worked solutions in the model's chat layout, never one of the held-out problems SFT and RL evaluate on
    (held_out_prompts), so a chain's pass@1 after pre-training is measured on problems it never read."""
    from slide.model.tokenizer import assistant_text, chat_prompt
    from slide.rl.data import PromptSource
    from slide.tasks import parse_task_specs
    problems = PromptSource(parse_task_specs(spec), seed + 7_919, held_out_prompts(spec)).next(count)
    return [chat_prompt(tok, [{"role": "user", "content": p.prompt}]) + assistant_text(p.reasoning, p.solution or p.answer, end="")
            for p in problems]


# Needle documents, version 2 (issue 24): a char-level model retrieves by matching ONE token, the key, so a
# previous-token head plus an induction head can answer (`?K` attends to the token after the earlier `K`, copies
# it); version 1's four-digit keys needed a multi-token match. Keys never occur in the haystack, and a filler of few
# words keeps long documents at few keys (26 at most) while the distances grow. The test-size model learns these only
# once an induction head exists (builtin:copy first; benchmarks/RESULTS.md, 2026-12-03).
NEEDLE_KEYS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"  # one token each with the built-in tokenizer
NEEDLE_EVERY = 20  # document tokens per needle: a 512-token document holds 25 keys
FILLER = ("the", "of", "and", "a", "in", "is", "it", "to", "was", "for", "on", "as", "with", "his", "they", "at",
          "be", "this", "from", "have", "or", "by", "one", "had", "not", "but", "what", "all", "were", "when", "we",
          "there")  # lowercase only: no key, digit, `?` or `=` in the haystack


def _filler_lines(rng: random.Random, chars: int) -> list[str]:
    """Lines of random filler words, each ending in a newline, `chars` characters in all (the last word cut)."""
    lines, left = [], chars
    while left > 0:
        words = " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 8)))
        line = (words[:left - 1] + "\n") if left > 1 else "\n"
        lines.append(line)
        left -= len(line)
    return lines


def needle_doc(rng: random.Random, length: int, queries: int = 1, n_keys: int | None = None) -> tuple[str, str]:
    """(document, answer) of `length` characters together (tokens, with the built-in tokenizer; at least 16).

    The document: filler lines with `n` needle lines `KVV` (distinct capital keys, values 00-99) between them at
    random (`n = n_keys`, else `length // NEEDLE_EVERY`, 1 to 26), then `queries` questions about distinct keys: `?KVV`
    lines, answered in place, but the last, `?K`, whose value is the answer (two digits: chance 1 in 100)."""
    n = max(1, min(len(NEEDLE_KEYS), n_keys or length // NEEDLE_EVERY))
    keys = rng.sample(NEEDLE_KEYS, n)
    values = [f"{rng.randrange(100):02d}" for _ in keys]
    asked = rng.sample(range(n), max(1, min(queries, n)))
    questions = "".join(f"?{keys[q]}{values[q]}\n" for q in asked[:-1]) + f"?{keys[asked[-1]]}"
    filler = _filler_lines(rng, max(0, length - 4 * n - len(questions) - 2))
    slots = [[] for _ in range(len(filler) + 1)]  # the needles before filler line i (the last slot: after all)
    for j in range(n):
        slots[rng.randrange(len(slots))].append(f"{keys[j]}{values[j]}\n")
    body = "".join("".join(needles) + line for needles, line in zip(slots, filler + [""]))
    return body + questions, values[asked[-1]]


def needle_docs(max_len: int, count: int = 3000, seed: int = 0) -> list[str]:
    """Training documents of 64..max_len tokens with their end-of-text token (never cut by a max_len row). Each
    holds 1 to length // NEEDLE_EVERY keys, uniformly, and asks about every one (Zoology's multi-query associative
    recall: each answered question is a retrieval to learn from, where one final question gives two answer tokens
    a document). Documents with one or two keys are the stepping stone: copying the digits after a capital letter
    pays before matching the key does, and matching then picks the right one of several."""
    rng = random.Random(seed + 31)
    docs = []
    for _ in range(count):
        length = rng.randint(min(64, max_len - 1), max_len - 1)
        keys = rng.randint(1, max(1, min(len(NEEDLE_KEYS), length // NEEDLE_EVERY)))
        doc, answer = needle_doc(rng, length, queries=keys, n_keys=keys)
        docs.append(doc + answer)
    return docs


def copy_docs(count: int = 6000, seed: int = 0) -> list[str]:
    """Documents whose second copy of a random string only an induction head (match the current token earlier,
    copy its successor) predicts: the gap varies, so no fixed-offset head can. The test-size model forms that head in
    ~500 steps here and not in 2,400 steps of needle documents alone, whose copy targets are sparse. Letters and
    digits: the head then copies the tokens needle answers are made of (version 1, letters only, left a needle stage
    after it to learn copying digits, and at seed 2 it never did; benchmarks/RESULTS.md, 2026-12-03)."""
    rng = random.Random(seed)
    symbols = string.ascii_letters + string.digits
    docs = []
    for _ in range(count):
        a = "".join(rng.choice(symbols) for _ in range(24))
        gap = "".join(rng.choice(symbols) for _ in range(rng.randint(0, 40)))
        docs.append(f"{a}|{gap}|{a}")
    return docs


# A generator's version is in its corpus file's name, so a changed generator never reuses an old file. reasoning 2:
# none of the held-out problems SFT and RL evaluate on (2026-12-03); needle 2: one-letter keys in a filler haystack;
# copy 2: digits among the letters.
VERSIONS = {"needle": 2, "reasoning": 2, "copy": 2}


def build(spec: str, corpora_dir: str, tok, seed: int = 0) -> str:
    """The JSONL path of builtin corpus `spec` (without the prefix), built now if absent."""
    name, _, arg = spec.partition(":")
    makers = {"code": lambda: code_docs(), "text": lambda: text_docs(), "repo": lambda: repo_docs(seed=seed),
              "reasoning": lambda: reasoning_docs(tok, seed=seed), "needle": lambda: needle_docs(int(arg), seed=seed),
              "copy": lambda: copy_docs(seed=seed)}
    if name not in makers or (name == "needle") != bool(arg) or (arg and not arg.isdigit()):
        raise UserError(f"data source {BUILTIN}{spec}: unknown corpus (allowed: {BUILTIN}code, {BUILTIN}text, "
                        f"{BUILTIN}repo, {BUILTIN}reasoning, {BUILTIN}needle:MAX_TOKENS, {BUILTIN}copy)")
    version = f"_v{VERSIONS[name]}" if name in VERSIONS else ""
    path = Path(corpora_dir) / f"{name}{'_' + arg if arg else ''}{version}_s{seed}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            for text in makers[name]():
                f.write(json.dumps({"text": text}) + "\n")
        tmp.replace(path)  # atomic: a killed build leaves no half file behind
    return str(path)
