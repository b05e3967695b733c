"""Load or build the policy model, in a dtype on a device; bad checkpoints become one-line user errors.

The trainer's copy is always fp32 (master weights; `train.precision` only sets the autocast); a model that
only generates (eval, `data measure`, a reference policy) may load straight in bf16, half the memory."""
from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from slide.errors import UserError, first_line
from slide.model.tiny import build_model, tiny_config

CPU = torch.device("cpu")
META = torch.device("meta")  # tensors with shapes and dtypes but no storage


def load_model(path: str, what: str = "model", dtype: torch.dtype = torch.float32, device=CPU):
    """An HF causal LM from a local folder, in `dtype` (the architecture's fp32-only modules kept in fp32), on
    `device` (loaded on the CPU, then moved)."""
    p = checkpoint_folder(path, what)
    try:
        model = AutoModelForCausalLM.from_pretrained(p, dtype=dtype)
    except Exception as e:
        raise UserError(f"{what} {path!r}: cannot load checkpoint ({first_line(e)})") from None
    return model.to(device).eval()


def checkpoint_folder(path: str, what: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"{what} {path!r}: no such checkpoint folder")
    if not (p / "config.json").is_file():
        raise UserError(f"{what} {path!r}: not a Hugging Face checkpoint (no config.json)")
    return p


def load_policy(init: str | None, size: str, tokenizer, seed: int, dtype: torch.dtype = torch.float32,
                device=CPU):
    """The checkpoint at `init` (its tokenizer checked against its embeddings), or a fresh tiny glm4_moe at `size`
    (built on the CPU, so a seed gives the same weights on every device), in `dtype` on `device`.
    device META: the same architecture with no storage (only `init`'s config.json is read), for an FSDP2 rank
    that receives its shards of the weights from rank 0 (slide/cluster/loading.py); its buffers are placeholders."""
    if torch.device(device) == META:
        with torch.device(META):
            if init:
                config = AutoConfig.from_pretrained(checkpoint_folder(init, "model.init"))
                return AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
            return cast_for_compute(build_model(tiny_config(size, tokenizer), seed), dtype).eval()
    if init:
        model = load_model(init, "model.init", dtype, device)
        check_vocab(tokenizer, model.get_input_embeddings().num_embeddings, f"model.init {init!r}")
        return model
    return cast_for_compute(build_model(tiny_config(size, tokenizer), seed), dtype).to(device).eval()


def load_with_tokenizer(path: str, what: str, dtype: torch.dtype = torch.float32, device=CPU):
    """(model, tokenizer) of a checkpoint folder: its own tokenizer, checked against its embeddings; the bundled
    one only for a folder without tokenizer files (a SLIDE model saved without it)."""
    from slide.model.tokenizer import has_tokenizer, load_tokenizer
    model = load_model(path, what, dtype, device)
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
