"""Training targets from a checkpoint's own chat template: the assistant's span found in the rendering.

    ids, mask = template_example(tok, [{"role": "user", "content": "What is 2+3?"}], "2+3=5", "5", thinking=True)

SLIDE's built-in character tokenizer concatenates token by token, so its SFT targets are text pieces
(slide/sft.py: chat_prompt + assistant_text). Any other checkpoint's template decides itself how an assistant
turn looks (ChatML's `<|im_start|>assistant\\n<think>\\n...\\n</think>\\n\\n...<|im_end|>`, Llama-3's headers, ...),
and a BPE tokenizer may merge across a boundary of text pieces. So the conversation is rendered twice by the
template, without and with the assistant turn; the first must be a prefix of the second (an append-only template
for this turn), and the assistant span is the tokens of the second rendering that start at or after the prefix,
through the first stop token (the model must learn to end its turn; what the template writes after that, e.g.
a newline, is not trained). A template that writes no end token after the assistant's last turn (GLM-4.5's: the
next role token ends it) gets the checkpoint's first stop token appended, trained: generation ends there.
Token offsets locate the span, so no text piece is tokenized on its own.
"""
from __future__ import annotations

from slide.errors import UserError
from slide.model.tokenizer import _normalize_messages, chat_prompt, stop_token_ids


def template_example(tok, messages: list[dict], reasoning: str, content: str,
                     thinking: bool) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of `messages` plus one assistant turn (reasoning, content), rendered by `tok`'s template;
    mask 1 on the assistant's span (its text and the stop token that ends it)."""
    name = getattr(tok, "name_or_path", "?")
    prompt = chat_prompt(tok, messages, thinking=thinking)
    turn = {"role": "assistant", "content": content, "reasoning_content": reasoning if thinking else ""}
    full = tok.apply_chat_template(_normalize_messages(messages) + [turn], tokenize=False, enable_thinking=thinking)
    if not full.startswith(prompt):
        raise UserError(f"chat template of {name!r}: the conversation with the assistant's turn does not start with "
                        f"the generation prompt, so the assistant's span cannot be found (the template rewrites "
                        f"what comes before the turn)")
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    cut = len(prompt)
    start = next((i for i, (a, _) in enumerate(offsets) if a >= cut), len(ids))
    if start and offsets[start - 1][1] > cut:
        raise UserError(f"chat template of {name!r}: a token spans the end of the generation prompt (at character "
                        f"{cut}), so prompt and answer cannot be told apart on token ids")
    stops = stop_token_ids(tok)
    end = next((i + 1 for i in range(start, len(ids)) if ids[i] in stops), None)
    if end is None:  # the template ends the turn with nothing: the model must still learn to stop
        ids, end = ids + [stops[0]], len(ids) + 1
    if end == start + 1 and ids[start] in stops and not content:
        raise UserError(f"chat template of {name!r}: the assistant's turn renders to no tokens")
    return ids, [0] * start + [1] * (end - start) + [0] * (len(ids) - end)
