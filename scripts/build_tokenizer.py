#!/usr/bin/env python
"""Build SLIDE's character-level tokenizer and its GLM-4.5-style chat template.

The output folder (default: slide/assets/tokenizer/) is shipped with the package and loads with plain
`transformers.AutoTokenizer.from_pretrained(folder)`: no SLIDE code is needed to use it.

Vocabulary (115 ids, fixed order so ids never move):
    0..17   control tokens: <|endoftext|> (eos and pad), [gMASK], <sop>, <|system|>, <|user|>, <|assistant|>,
            <|observation|>, <think>, </think>, <tool_call>, </tool_call>, <arg_key>, </arg_key>, <arg_value>,
            </arg_value>, <tool_response>, </tool_response>, <|unk|> (unk)
    18, 19  "\\n", "\\t"
    20..114 printable ASCII, " " (32) to "~" (126), in code-point order
Any other character (non-ASCII, "\\r", other control characters) encodes to <|unk|>.

The role tokens, [gMASK], <sop>, <|endoftext|> and <|unk|> are special: `decode(..., skip_special_tokens=True)`
drops them. The think and tool tags are added tokens that are not special: they survive that decode, but are
still always matched as single tokens wherever their text appears.

Usage:
    python scripts/build_tokenizer.py            # (re)build into slide/assets/tokenizer/
    python scripts/build_tokenizer.py --out DIR  # build somewhere else
    python scripts/build_tokenizer.py --check    # rebuild into a temp dir; exit 1 if the shipped files differ
"""
from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "slide" / "assets" / "tokenizer"

EOS = "<|endoftext|>"
UNK = "<|unk|>"
# Special tokens: skipped by skip_special_tokens=True.
SPECIAL = [EOS, "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
# Tags: always one token each, but ordinary text for decode (not skipped).
TAGS = [
    "<think>", "</think>",
    "<tool_call>", "</tool_call>",
    "<arg_key>", "</arg_key>",
    "<arg_value>", "</arg_value>",
    "<tool_response>", "</tool_response>",
]
CONTROL = SPECIAL + TAGS + [UNK]  # ids 0..17, in this order
CHARS = ["\n", "\t"] + [chr(c) for c in range(32, 127)]
VOCAB = CONTROL + CHARS

MODEL_MAX_LENGTH = 4096

# GLM-4.5 token layout, SLIDE's own wording. Every tag uses whitespace control and every piece of output is
# a string literal, so the template's own line breaks and indentation never reach the output. The assistant's
# own text sits in transformers' {% generation %} block, so apply_chat_template(...,
# return_assistant_tokens_mask=True) marks exactly the tokens the model writes (minus the end token).
#
# Layout (see slide/model/tokenizer.py for the Python side that must agree with it):
#   [gMASK]<sop>
#   [tools block]     <|system|>\n# Tools ... one JSON schema per line ... (only when tools= is given)
#   system            <|system|>\n{content}
#   user              <|user|>\n{content}            (+ "/nothink" when enable_thinking=False)
#   assistant         <|assistant|>\n<think>{reasoning}</think>\n{content}{tool calls}
#                     reasoning is shown only after the last user turn; earlier turns get <think></think>
#   tool call         <tool_call>{name}(\n<arg_key>{k}</arg_key>\n<arg_value>{v}</arg_value>)*\n</tool_call>
#                     joined to the content and to each other by "\n" (no "\n" before the first call when
#                     the content is empty, since "</think>\n" already ends the line)
#   tool/observation  <|observation|>\n<tool_response>{content}</tool_response>
#                     consecutive tool messages share one <|observation|>, each response on its own line
#   generation prompt <|assistant|>\n                (enable_thinking=False: <|assistant|>\n<think></think>\n)
# No end token is written after an assistant turn: the model ends a turn with <|endoftext|>, <|user|> or
# <|observation|> (the stop tokens), and a training target appends one explicitly.
CHAT_TEMPLATE = r"""
{%- macro text(c) -%}
  {%- if c is string -%}
    {{- c -}}
  {%- elif c is iterable and c is not mapping -%}
    {%- for part in c -%}
      {%- if part is string -%}
        {{- part -}}
      {%- elif part is mapping and part.type == 'text' -%}
        {{- part.text -}}
      {%- endif -%}
    {%- endfor -%}
  {%- elif c is defined and c is not none -%}
    {{- c | string -}}
  {%- endif -%}
{%- endmacro -%}
{%- set nothink = enable_thinking is defined and not enable_thinking -%}
{%- set ns = namespace(last_user=-1) -%}
{%- for m in messages -%}
  {%- if m.role == 'user' -%}
    {%- set ns.last_user = loop.index0 -%}
  {%- endif -%}
{%- endfor -%}
{{- '[gMASK]<sop>' -}}
{%- if tools -%}
  {{- '<|system|>\n# Tools\nYou can call these functions (JSON schemas, one per line):' -}}
  {%- for tool in tools -%}
    {{- '\n' + (tool | tojson) -}}
  {%- endfor -%}
  {{- '\nTo call one, write its name and arguments in this form, one <arg_key>/<arg_value> pair per argument:' -}}
  {{- '\n<tool_call>NAME\n<arg_key>KEY</arg_key>\n<arg_value>VALUE</arg_value>\n</tool_call>' -}}
  {{- '\nThe results come back inside <tool_response></tool_response>.' -}}
{%- endif -%}
{%- for m in messages -%}
  {%- if m.role == 'system' -%}
    {{- '<|system|>\n' + text(m.content) -}}
  {%- elif m.role == 'user' -%}
    {%- set content = text(m.content) -%}
    {{- '<|user|>\n' + content -}}
    {%- if nothink and not content.endswith('/nothink') -%}
      {{- '/nothink' -}}
    {%- endif -%}
  {%- elif m.role == 'assistant' -%}
    {%- set content = text(m.content) -%}
    {%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' -%}
    {%- if m.reasoning_content is not string and '</think>' in content -%}
      {%- set reasoning = content.split('</think>')[0].split('<think>')[-1] -%}
      {%- set content = content.split('</think>', 1)[1] -%}
      {%- if content.startswith('\n') -%}
        {%- set content = content[1:] -%}
      {%- endif -%}
    {%- endif -%}
    {%- if loop.index0 <= ns.last_user -%}
      {%- set reasoning = '' -%}
    {%- endif -%}
    {%- set calls = m.tool_calls if m.tool_calls is defined and m.tool_calls else [] -%}
    {{- '<|assistant|>\n' -}}
    {%- generation -%}
    {{- '<think>' + reasoning + '</think>\n' + content -}}
    {%- for call in calls -%}
      {%- set fn = call.function if call.function is defined else call -%}
      {%- set args = fn.arguments if fn.arguments is defined and fn.arguments is not none else {} -%}
      {%- if args is not mapping -%}
        {{- raise_exception('tool call arguments must be a dict (decode JSON-string arguments first), got: ' + (args | string)) -}}
      {%- endif -%}
      {%- if content or not loop.first -%}
        {{- '\n' -}}
      {%- endif -%}
      {{- '<tool_call>' + fn.name -}}
      {%- for key, value in args.items() -%}
        {{- '\n<arg_key>' + key + '</arg_key>\n<arg_value>' -}}
        {{- value if value is string else (value | tojson) -}}
        {{- '</arg_value>' -}}
      {%- endfor -%}
      {{- '\n</tool_call>' -}}
    {%- endfor -%}
    {%- endgeneration -%}
  {%- elif m.role == 'tool' or m.role == 'observation' -%}
    {%- if loop.first or messages[loop.index0 - 1].role not in ['tool', 'observation'] -%}
      {{- '<|observation|>' -}}
    {%- endif -%}
    {{- '\n<tool_response>' + text(m.content) + '</tool_response>' -}}
  {%- else -%}
    {{- raise_exception('unknown chat role ' + (m.role | string) + '; allowed: system, user, assistant, tool, observation') -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|assistant|>\n' -}}
  {%- if nothink -%}
    {{- '<think></think>\n' -}}
  {%- endif -%}
{%- endif -%}
""".strip()


def build_backend() -> Tokenizer:
    """The raw `tokenizers` object: WordLevel over single characters plus the control tokens."""
    vocab = {tok: i for i, tok in enumerate(VOCAB)}
    assert len(vocab) == len(VOCAB), "duplicate vocabulary entry"
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # One piece per character ("[\s\S]" also matches "\n", which "." does not).
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    # The control tokens are already in the vocab, so these keep their ids; registering them as added tokens
    # makes them match as whole units before the per-character split.
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL + [UNK]])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAGS])
    return tok


def build(out_dir: Path) -> list[Path]:
    """Build the tokenizer and save it into `out_dir`; returns the files written."""
    from transformers import PreTrainedTokenizerFast

    backend = build_backend()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=UNK,
        # Registers the other special tokens with transformers too, so `all_special_ids` lists all eight.
        extra_special_tokens=[t for t in SPECIAL if t != EOS],
        model_max_length=MODEL_MAX_LENGTH,
        padding_side="left",
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    ids = tok.convert_tokens_to_ids(VOCAB)
    assert ids == list(range(len(VOCAB))), "control token ids moved"
    out_dir.mkdir(parents=True, exist_ok=True)
    written = tok.save_pretrained(str(out_dir))
    return [Path(p) for p in written]


def check(shipped: Path) -> int:
    """Rebuild into a temp dir and compare byte for byte with `shipped`. Returns the exit status."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        build(fresh)
        fresh_names = sorted(p.name for p in fresh.iterdir())
        shipped_names = sorted(p.name for p in shipped.iterdir()) if shipped.is_dir() else []
        problems = []
        for name in sorted(set(fresh_names) | set(shipped_names)):
            if name not in shipped_names:
                problems.append(f"{name}: missing from {shipped}")
            elif name not in fresh_names:
                problems.append(f"{name}: in {shipped} but not produced by the build")
            elif not filecmp.cmp(fresh / name, shipped / name, shallow=False):
                problems.append(f"{name}: differs from a fresh build")
    if problems:
        for p in problems:
            print(f"error: {p}", file=sys.stderr)
        print(f"error: {shipped} is stale; run `python scripts/build_tokenizer.py`", file=sys.stderr)
        return 1
    print(f"ok: {shipped} matches a fresh build ({len(fresh_names)} files, vocab {len(VOCAB)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--check", action="store_true", help="rebuild into a temp dir and fail if --out differs")
    args = ap.parse_args(argv)
    if args.check:
        return check(args.out)
    written = build(args.out)
    print(f"wrote {len(written)} files to {args.out} (vocab {len(VOCAB)}):")
    for p in written:
        print(f"  {p.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
