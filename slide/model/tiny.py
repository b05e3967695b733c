"""Tiny GLM-4.5-architecture (`glm4_moe`) models that SLIDE trains from nothing, and GLM's router balancing.

The architecture is transformers' own `Glm4MoeForCausalLM` (MoE with one shared expert, sigmoid routing
with a correction bias, partial RoPE, QK-norm, GQA, qkv bias, untied embeddings); only the sizes are tiny.
Every checkpoint is a plain Hugging Face folder that `AutoModelForCausalLM` loads without SLIDE.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import Glm4MoeConfig, Glm4MoeForCausalLM

# name -> sizes. "test" (~4.5M params) keeps the test suite fast; "demo" (~20M) is the CPU demo model.
SIZES: dict[str, dict] = {
    # "Deeper, narrower" and sparse like GLM: many small experts, 2 active + 1 shared, so the parameter
    # count is ~8x the per-token compute (a 2-core CPU trains the demo model at ~2-4K tokens/s).
    "test": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=384, moe_intermediate_size=128, n_routed_experts=24, num_experts_per_tok=2),
    "demo": dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=384, moe_intermediate_size=128, n_routed_experts=80, num_experts_per_tok=2),
}


def tiny_config(size: str, tokenizer) -> Glm4MoeConfig:
    """A `glm4_moe` config at a named size for `tokenizer`'s vocabulary."""
    if size not in SIZES:
        from slide.errors import UserError
        raise UserError(f"model.size: unknown size {size!r} (allowed: {', '.join(SIZES)})")
    return glm_config(tokenizer, **SIZES[size])


def glm_config(tokenizer, **sizes) -> Glm4MoeConfig:
    """A `glm4_moe` config with SLIDE's GLM-4.5 choices and the given sizes (hidden_size, layers, experts...)."""
    return Glm4MoeConfig(
        vocab_size=len(tokenizer),
        **sizes,
        n_shared_experts=1,
        first_k_dense_replace=1,  # GLM: the first layer(s) dense, the rest MoE
        routed_scaling_factor=2.5,
        norm_topk_prob=True,
        use_qk_norm=True,
        attention_bias=True,
        tie_word_embeddings=False,
        max_position_embeddings=2048,
        num_mtp_layers=0,  # transformers builds no MTP layer for glm4_moe
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )


def build_model(config: Glm4MoeConfig, seed: int) -> Glm4MoeForCausalLM:
    """A randomly initialised model; the same seed gives the same weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = Glm4MoeForCausalLM(config)
    return model.float()


def routers(model) -> list[torch.nn.Module]:
    """The MoE gates (modules holding `e_score_correction_bias`), in layer order."""
    return [m for m in model.modules() if hasattr(m, "e_score_correction_bias")]


class ExpertLoad:
    """Counts tokens routed to each expert (forward hooks on the gates) and applies GLM's
    loss-free balance update: bias += rate * sign(mean load - load) after each optimizer step.

    transformers keeps the correction bias as a frozen buffer and never updates it; without this one
    expert can take 35-46% of the tokens of a tiny model (shared/notes/learning-calibration.md).
    """

    def __init__(self, model):
        self.gates = routers(model)
        self.counts = [torch.zeros(g.num_experts) for g in self.gates]
        self._mask: torch.Tensor | None = None  # [batch * seq] of the forward under way: True = a real token
        for i, gate in enumerate(self.gates):
            gate.register_forward_hook(self._hook(i))

    @contextmanager
    def tokens(self, mask: torch.Tensor):
        """Count the positions where `mask` ([batch, seq], 1 = a real token, 0 = padding) is set, in the training
        forwards run inside (nothing is counted outside): padding is routed too, and how much of it a batch has
        depends on how it was cut."""
        self._mask = mask.reshape(-1).bool()  # flattened once, not in every gate's hook
        try:
            yield
        finally:
            self._mask = None

    def _hook(self, i):
        def hook(module, args, output):
            # training forwards inside tokens() only: not evaluation, nor the recomputation of a layer's
            # forward in the backward pass under gradient checkpointing (it would count every token twice)
            if self._mask is not None and torch.is_grad_enabled():
                idx = output[2]  # [batch * seq, top_k], row-major over (batch, seq)
                idx = idx[self._mask.to(idx.device)]
                self.counts[i] += torch.bincount(idx.reshape(-1), minlength=module.num_experts).float().cpu()
        return hook

    @torch.no_grad()
    def update_bias(self, rate: float) -> dict[str, float]:
        """Nudge each gate's bias toward under-loaded experts; returns load stats; resets counts."""
        max_share = 0.0
        for gate, count in zip(self.gates, self.counts):
            total = count.sum()
            if total == 0:
                continue
            share = count / total
            max_share = max(max_share, float(share.max()))
            bias = gate.e_score_correction_bias
            bias += (rate * torch.sign(share.mean() - share)).to(bias.device, bias.dtype)
            count.zero_()
        return {"expert_share_max": max_share}
