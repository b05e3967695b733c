"""A user's own checkpoint, built here with nothing downloaded: a subword tokenizer trained by the `tokenizers`
library on the task's text (byte-level BPE; Unigram for the Llama style), a chat template in the style of a real
family, and a tiny model whose embeddings fit the vocabulary. Styles (STYLES): "chatml" (Qwen3: ChatML, `<think>`
reasoning, `enable_thinking`, Hermes JSON tool calls; qwen2, dense), "llama3" (Llama-3.1: header tokens,
`<|eot_id|>`, no reasoning, JSON tool calls; llama, dense), "glm" (GLM-4.5, the built-in tokenizer's template:
`[gMASK]<sop>`, `<|user|>`, `<|assistant|>`, `<|observation|>`, XML tool calls, no end token after an assistant
turn; glm4_moe, MoE)."""
from __future__ import annotations

import json
import random
from pathlib import Path

from slide.tasks import Arithmetic

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>",
            "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]
# Qwen3's layout: tool schemas in the system turn, Hermes JSON calls, tool results grouped in one user turn, reasoning
# shown only for turns after the last user message, and (its quirk: not append-only) an empty think block written
# only when the turn is the last message
CHATML = (
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if messages[0].role == 'system' -%}{{- messages[0].content + '\\n\\n' -}}{%- endif -%}"
    "{{- '# Tools\\n\\nFunction signatures within <tools></tools>:\\n<tools>' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '\\n</tools>\\n\\nFor each call, return a JSON object with the function name and arguments within "
    "<tool_call></tool_call>:\\n<tool_call>\\n{\"name\": <function-name>, \"arguments\": <args-json-object>}"
    "\\n</tool_call><|im_end|>\\n' -}}"
    "{%- elif messages[0].role == 'system' -%}"
    "{{- '<|im_start|>system\\n' + messages[0].content + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- set ns = namespace(last_query=-1) -%}"
    "{%- for m in messages -%}{%- if m.role == 'user' -%}{%- set ns.last_query = loop.index0 -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- for m in messages -%}"
    "{%- if m.role == 'user' -%}"
    "{{- '<|im_start|>user\\n' + m.content + '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'assistant' -%}"
    "{%- set content = m.content or '' -%}"
    "{%- set reasoning = m.reasoning_content if m.reasoning_content is string else '' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if loop.index0 > ns.last_query and (loop.last or reasoning) -%}"
    "{{- '<think>\\n' + reasoning.strip('\\n') + '\\n</think>\\n\\n' + content.lstrip('\\n') -}}"
    "{%- else -%}{{- content -}}{%- endif -%}"
    "{%- for call in (m.tool_calls or []) -%}"
    "{%- set fn = call.function if call.function is defined else call -%}"
    "{%- if (loop.first and content) or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>\\n{\"name\": \"' + fn.name + '\", \"arguments\": ' + (fn.arguments | tojson) + '}\\n</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' -%}{{- '<|im_start|>user' -}}{%- endif -%}"
    "{{- '\\n<tool_response>\\n' + m.content + '\\n</tool_response>' -}}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' -%}{{- '<|im_end|>\\n' -}}{%- endif -%}"
    "{%- elif m.role != 'system' -%}"
    "{{- raise_exception('unknown role ' + m.role) -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


# Llama-3.1's layout: tool schemas in a system turn, a tool call as the whole assistant turn in JSON with
# "parameters", results in an ipython turn
LLAMA3 = (
    "{{- '<|begin_of_text|>' -}}"
    "{%- if tools -%}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\nRespond with a JSON object {\"name\": function name, "
    "\"parameters\": dictionary of arguments} to call one of these functions:' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- for m in messages -%}"
    "{%- if m.tool_calls -%}"
    "{%- set fn = m.tool_calls[0].function if m.tool_calls[0].function is defined else m.tool_calls[0] -%}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n{\"name\": \"' + fn.name + '\", \"parameters\": ' "
    "+ (fn.arguments | tojson) + '}<|eot_id|>' -}}"
    "{%- elif m.role == 'tool' -%}"
    "{{- '<|start_header_id|>ipython<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' -}}"
    "{%- else -%}"
    "{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}{%- endif -%}"
)


# GLM-4.5's layout, as the built-in model's tokenizer carries it: XML tool calls, <|observation|> turns
GLM = (Path(__file__).resolve().parents[1] / "slide" / "assets" / "tokenizer" / "chat_template.jinja").read_text()
# style -> (template, eos token, stop tokens for generation_config.json, architecture)
STYLES = {"chatml": (CHATML, "<|im_end|>", ["<|im_end|>", "<|endoftext|>"], "qwen2"),
          "llama3": (LLAMA3, "<|eot_id|>", ["<|eot_id|>"], "llama"),
          "glm": (GLM, "<|endoftext|>", ["<|endoftext|>", "<|user|>", "<|observation|>"], "glm4_moe")}


def corpus(n: int = 2000, seed: int = 0) -> list[str]:
    task, rng = Arithmetic(), random.Random(seed)
    out = []
    for _ in range(n):
        p = task.generate(rng, rng.choice([1, 2]))
        out.append(f"{p.prompt}\n{p.reasoning}\n{p.answer}")
    return out


def build(folder: Path, vocab_size: int = 400, embedding_rows: int | None = None, style: str = "chatml") -> Path:
    """An HF folder: tokenizer (subword + the style's template), generation_config eos ids, a 2-layer model (64
    wide)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    template, eos_token, stops, arch = STYLES[style]

    if style == "llama3":  # a Unigram model (SentencePiece's kind), every printable ASCII character a piece
        sub = Tokenizer(models.Unigram())
        sub.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="never")
        sub.decoder = decoders.Metaspace(prepend_scheme="never")
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS + ["<unk>"], unk_token="<unk>",
                                          initial_alphabet=[chr(c) for c in range(32, 127)] + ["\n"])
    else:  # byte-level BPE (GPT-2's kind, Qwen's and GLM's)
        sub = Tokenizer(models.BPE())
        sub.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        sub.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    sub.train_from_iterator(corpus(), trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=sub, eos_token=eos_token, pad_token="<|endoftext|>",
                                  chat_template=template)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    model(arch, embedding_rows or len(tok), tok).save_pretrained(folder)
    eos = tok.convert_tokens_to_ids(stops)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": eos, "pad_token_id": tok.pad_token_id}))
    return folder


def model(arch: str, rows: int, tok):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from slide.model.tiny import build_model, glm_config
    dense = dict(vocab_size=rows, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**dense))
    if arch == "llama":
        return LlamaForCausalLM(LlamaConfig(**dense))
    config = glm_config(tok, hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, head_dim=16, n_routed_experts=4,
                        num_experts_per_tok=2)
    config.vocab_size = rows
    return build_model(config, 0)
