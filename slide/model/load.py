"""Load or build the policy model; bad checkpoints become one-line user errors."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from slide.errors import UserError, first_line
from slide.model.tiny import build_model, tiny_config


def load_model(path: str, what: str = "model"):
    """An HF causal LM from a local folder, in float32 for CPU training."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{what} {path!r}: no such checkpoint folder")
    if not (p / "config.json").is_file():
        raise UserError(f"{what} {path!r}: not a Hugging Face checkpoint (no config.json)")
    try:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
    except Exception as e:
        raise UserError(f"{what} {path!r}: cannot load checkpoint ({first_line(e)})") from None
    return model.eval()


def load_policy(init: str | None, size: str, tokenizer, seed: int):
    """The checkpoint at `init` (its tokenizer checked against its embeddings), or a fresh tiny glm4_moe at `size`."""
    if init:
        model = load_model(init, "model.init")
        check_vocab(tokenizer, model.get_input_embeddings().num_embeddings, f"model.init {init!r}")
        return model
    return build_model(tiny_config(size, tokenizer), seed).eval()


def load_with_tokenizer(path: str, what: str):
    """(model, tokenizer) of a checkpoint folder: its own tokenizer, checked against its embeddings; the bundled
    one only for a folder without tokenizer files (a SLIDE model saved without it)."""
    from slide.model.tokenizer import has_tokenizer, load_tokenizer
    model = load_model(path, what)
    tok = load_tokenizer(path, what) if has_tokenizer(path) else load_tokenizer()
    check_vocab(tok, model.get_input_embeddings().num_embeddings, f"{what} {path!r}")
    return model, tok


def check_vocab(tokenizer, rows: int, what: str) -> None:
    """A UserError if the tokenizer can produce ids the embedding table (`rows` rows) does not have."""
    if len(tokenizer) > rows:
        raise UserError(f"{what}: the tokenizer has {len(tokenizer)} tokens but the model's embeddings only {rows} "
                        f"rows; ids past {rows - 1} would index outside them (a tokenizer from another model?)")


def cast_for_compute(model, dtype: torch.dtype):
    """`model.to(dtype)` in place, keeping at fp32 what transformers keeps there for the architecture
    (`_keep_in_fp32_modules_strict`: glm4_moe's router weight and its correction bias, whose top-k routing is
    discontinuous), as `from_pretrained(dtype=...)` would. Returns the model."""
    model.to(dtype)
    keep = getattr(model, "_keep_in_fp32_modules_strict", None) or ()
    if dtype == torch.float32 or not keep:
        return model
    for prefix, module in model.named_modules():
        for kind in ("_parameters", "_buffers"):
            for name, t in getattr(module, kind).items():
                if t is not None and t.is_floating_point() and any(k in f"{prefix}.{name}" for k in keep):
                    if kind == "_parameters":
                        t.data = t.data.float()
                    else:
                        module._buffers[name] = t.float()
    return model
