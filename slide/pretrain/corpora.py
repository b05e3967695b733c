"""Miniature pre-training corpora the project builds offline, on any machine with Python, as JSONL (`text` field).

    builtin:code          the Python standard library's own .py files, one file a document
    builtin:text          natural language: the standard library's docstrings, one module's a document
    builtin:repo          repo-level documents: one package's files in one context, after a generated description,
                          an issue and a change in diff format (GLM's repo-level mid-training data)
    builtin:reasoning     synthetic reasoning traces: worked solutions of slide/tasks' generators in the chat layout
    builtin:needle:MAX    key-value retrieval documents up to MAX tokens: many `kNNNN=VV` lines, then a query
                          `?kNNNN=` answered by one of them (the long-context stage)

A source path `builtin:NAME` is built once into `corpora_dir/NAME.jsonl` and reused; the same seed gives the same
file on every machine with the same Python.
"""
from __future__ import annotations

import ast
import difflib
import json
import os
import random
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


def reasoning_docs(tok, count: int = 2000, seed: int = 0, spec: str = "arithmetic:1-3,countdown:2-3") -> list[str]:
    """Worked solutions in the model's chat layout, avoiding RL's default held-out problems (seed 0)."""
    from slide.model.tokenizer import assistant_text, chat_prompt
    from slide.rl.data import PromptSource, eval_problems
    from slide.tasks import parse_task_specs
    specs = parse_task_specs(spec)
    problems = PromptSource(specs, seed + 7_919, eval_problems(specs, 500, 0)).next(count)
    return [chat_prompt(tok, [{"role": "user", "content": p.prompt}]) + assistant_text(p.reasoning, p.solution or p.answer, end="")
            for p in problems]


def needle_doc(rng: random.Random, length: int) -> tuple[str, str]:
    """(document, answer): `kNNNN=VV` lines filling ~`length` characters (tokens, with the built-in tokenizer),
    then `?kNNNN=` asking for one of them, chosen uniformly; the answer is its two digits."""
    n = max(1, (length - 9) // 9)  # 9 characters a line, 7 for the query + 2 of answer
    keys = rng.sample(range(10_000), n)
    values = [rng.randrange(100) for _ in keys]
    q = rng.randrange(n)
    body = "".join(f"k{k:04d}={v:02d}\n" for k, v in zip(keys, values))
    return body + f"?k{keys[q]:04d}=", f"{values[q]:02d}"


def needle_docs(max_len: int, count: int = 3000, seed: int = 0) -> list[str]:
    rng = random.Random(seed + 31)
    docs = []
    for _ in range(count):
        doc, answer = needle_doc(rng, rng.randint(min(64, max_len), max_len))
        docs.append(doc + answer)
    return docs


def build(spec: str, corpora_dir: str, tok, seed: int = 0) -> str:
    """The JSONL path of builtin corpus `spec` (without the prefix), built now if absent."""
    name, _, arg = spec.partition(":")
    makers = {"code": lambda: code_docs(), "text": lambda: text_docs(), "repo": lambda: repo_docs(seed=seed),
              "reasoning": lambda: reasoning_docs(tok, seed=seed), "needle": lambda: needle_docs(int(arg), seed=seed)}
    if name not in makers or (name == "needle") != bool(arg) or (arg and not arg.isdigit()):
        raise UserError(f"data source {BUILTIN}{spec}: unknown corpus (allowed: {BUILTIN}code, {BUILTIN}text, "
                        f"{BUILTIN}repo, {BUILTIN}reasoning, {BUILTIN}needle:MAX_TOKENS)")
    path = Path(corpora_dir) / f"{name}{'_' + arg if arg else ''}_s{seed}.jsonl"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            for text in makers[name]():
                f.write(json.dumps({"text": text}) + "\n")
        tmp.replace(path)  # atomic: a killed build leaves no half file behind
    return str(path)
