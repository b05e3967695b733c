"""LoRA (peft): train low-rank adapters on a frozen base; engines, evaluation and exports get the merged weights.

    slide rl slide/configs/demo_rl.yaml model.init=runs/sft/final train.lora.rank=8 train.lr=1e-3
    slide sft slide/configs/demo_sft.yaml model.init=path/to/your-model lora.rank=16

The policy becomes peft's `PeftModel` (`get_peft_model`): each adapted weight W computes W x + (alpha / r) B A x,
only A and B train (the optimizer holds nothing else), and peft's own layers run the forward. What leaves the
trainer is always the merged weight W + (alpha / r) B A under the base model's names (`rollout_state_dict`), so
an engine, a worker or `slide eval` loads the plain base architecture and never needs peft.

What is adapted (`train.lora.target_modules`, default the attention and MLP projections the model has): peft
matches a name against the end of each module path. On transformers-5 MoE models whose experts are fused 3-D
parameters (glm4_moe, qwen2_moe), peft maps gate_proj / up_proj / down_proj onto those parameters (one rank-r
adapter per routed expert, rank 2r on the fused gate_up_proj) and no longer onto modules of those names: there the
attention and the routed experts are adapted; the shared experts, the dense first layers' MLPs and the router stay
frozen (peft cannot target them by name), and lora dropout is refused for expert parameters.

A checkpoint keeps the adapter in peft's format (`adapter/`: adapter_config.json, adapter_model.safetensors,
loadable with `PeftModel.from_pretrained`) plus `base_buffers.safetensors` (glm4_moe's router correction biases:
frozen weights, but GLM's loss-free balance moves them), and a merged HF folder on request.
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch

from slide.errors import UserError, first_line

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BUFFERS_FILE = "base_buffers.safetensors"


def has_lora(model) -> bool:
    """Whether `model` is a peft wrapper (a model can only be one once peft has been imported)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def unwrap(model):
    """The HF model itself: a peft wrapper's inner model (its LoRA layers in place), or `model`."""
    return model.get_base_model() if has_lora(model) else model


def targets(spec, model, where: str = "train.lora") -> list[str]:
    """The names `spec.target_modules` asks for, checked against `model`'s module and parameter names; a UserError
    naming what exists when one matches nothing (peft would silently skip it while another matches)."""
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    leaves |= {name.rsplit(".", 1)[-1] for name, _ in model.named_parameters()}  # fused experts: 3-D parameters
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
    if spec.target_modules is None:
        chosen = [t for t in DEFAULT_TARGETS if t in leaves]
        if not chosen:
            raise UserError(f"{where}.target_modules: the model has none of the default targets "
                            f"({', '.join(DEFAULT_TARGETS)}); name some of its linear layers: {', '.join(linear)}")
        return chosen
    names = [name for name, _ in model.named_modules()] + [name for name, _ in model.named_parameters()]
    missing = [t for t in spec.target_modules if not any(n == t or n.endswith("." + t) for n in names)]
    if missing or not spec.target_modules:
        what = f"{', '.join(map(repr, missing))} match{'es' if len(missing) == 1 else ''} no module" if missing \
            else "an empty list adapts nothing"
        raise UserError(f"{where}.target_modules: {what} of the model; its linear layers are named: "
                        f"{', '.join(linear)}")
    return list(spec.target_modules)


def add_lora(model, spec, seed: int, adapter: Path | None = None, where: str = "train.lora"):
    """`model` wrapped by peft with `spec`'s adapters (rank 0: `model` unchanged). A fresh adapter's A matrices are
    drawn from `seed` (B starts at zero: the wrapped model computes exactly what the base does); `adapter`: a
    checkpoint's adapter folder to continue from (its weights and the base buffers saved with it). `where`: the
    config path named in errors (`lora` for slide sft)."""
    if not spec.rank:
        return model
    from peft import PeftModel
    with torch.random.fork_rng():  # the run's RNG stream stays that of a full fine-tune
        torch.manual_seed(seed)
        if adapter is None:
            return _wrap(model, spec, where)
        wrapped = PeftModel.from_pretrained(model, adapter, is_trainable=True)
    from safetensors.torch import load_file
    buffers = dict(unwrap(wrapped).named_buffers())
    for name, saved in load_file(str(adapter / BUFFERS_FILE)).items():
        buffers[name].copy_(saved)
    return wrapped


def _wrap(model, spec, where: str):
    from peft import LoraConfig, get_peft_model
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                        target_modules=targets(spec, model, where))
    try:
        return get_peft_model(model, config)
    except ValueError as e:  # e.g. lora dropout on fused expert parameters
        raise UserError(f"{where}: {first_line(e)}") from None


def check_lora(spec, init: str | None, size: str, where: str = "train.lora") -> None:
    """Before anything is written: `spec` wraps the model at `init` (or the tiny one at `size`): its targets exist
    and peft accepts them, tried on an empty (meta-device) model of that architecture."""
    if not spec.rank:
        return
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):
        if init:
            model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(init))
        else:
            from slide.model.tiny import build_model, tiny_config
            from slide.model.tokenizer import load_tokenizer
            model = build_model(tiny_config(size, load_tokenizer()), 0)
        _wrap(model, spec, where)


def _base_name(name: str) -> str:
    """A wrapped model's state_dict name -> the base model's (peft puts the original module at `.base_layer`)."""
    return name.replace(".base_layer", "")


@torch.no_grad()
def rollout_state_dict(model) -> dict[str, torch.Tensor]:
    """What an engine receives: the model's state_dict; for a peft wrapper, the base model's names with every adapted
    weight merged, W + (alpha / r) B A (new tensors), the rest the model's own tensors (no copy)."""
    if not has_lora(model):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer
    inner = unwrap(model)
    deltas: dict[str, torch.Tensor] = {}
    for path, layer in inner.named_modules():
        if isinstance(layer, LoraLayer):
            # a Linear adapts `.weight`; a ParamWrapper (fused experts) the parameter it names
            key = f"{_base_name(path)}.{getattr(layer, 'parameter_name', 'weight')}"
            for name in layer.active_adapters:
                deltas[key] = deltas.get(key, 0) + layer.get_delta_weight(name)
    out = {}
    for name, tensor in inner.state_dict().items():
        if ".lora_" in name:
            continue
        base = _base_name(name)
        out[base] = tensor + deltas[base].to(tensor.dtype) if base in deltas else tensor
    return out


@torch.no_grad()
def merged_model(model, share: bool = False):
    """The base architecture holding `model`'s merged weights (peft's merge_and_unload on a copy): what an engine
    or an HF export gets. share=True: every tensor LoRA leaves alone (embeddings, norms, frozen experts, the router)
    is the policy's own, only the adapted weights are copies (a colocated fp32 engine then costs the adapted
    weights, not the model, and a push copies nothing else); never with a cast (it would cast the policy's)."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    adapted = {id(t) for m in model.modules() if isinstance(m, BaseTunerLayer)
               for t in [*m.parameters(), *m.buffers()]}
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()] if id(t) not in adapted} if share else {}
    base = copy.deepcopy(model, memo).merge_and_unload()
    base.__dict__.pop("peft_config", None)  # a plain HF model again: nothing for transformers to take for peft's
    return base


def save_adapter(model, folder: Path, tokenizer=None) -> None:
    """peft's adapter folder (adapter_config.json, adapter_model.safetensors) plus the base buffers (router
    correction biases) and the tokenizer: with the base checkpoint, everything the trained model is."""
    from safetensors.torch import save_file
    model.save_pretrained(folder)
    inner = unwrap(model)
    persistent = set(inner.state_dict())
    save_file({n: b.contiguous() for n, b in inner.named_buffers() if n in persistent}, str(folder / BUFFERS_FILE))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def save_merged(model, folder: Path) -> None:
    """An HF folder of `model` that AutoModelForCausalLM loads: a peft wrapper's weights merged."""
    (merged_model(model, share=True) if has_lora(model) else model).save_pretrained(folder)
