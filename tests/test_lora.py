"""LoRA (slide/model/lora.py): merged weights = W + (alpha / r) B A, engines after a push compute what the peft model
computes (fp32 exactly up to rounding; bf16/fp8 pushes apply), only adapters train, SFT then RL with LoRA learns,
a resumed LoRA run equals the uninterrupted one, and targets that match nothing are one `error:` line."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from own_checkpoint import build

from slide.config import LoraSpec, RLConfig, SFTConfig, dump_config, load_config
from slide.engine import make_engine
from slide.model.lora import add_lora, has_lora, merged_model, rollout_state_dict
from slide.model.tiny import build_model, glm_config
from slide.rl import sync
from slide.rundir import RunDir
from slide.weights.buckets import WeightSync

ROOT = Path(__file__).resolve().parents[1]


class _Tok:  # what glm_config reads of a tokenizer
    pad_token_id, eos_token_id = 0, 1

    def __len__(self):
        return 96


def qwen2():
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)).eval()


def glm():
    return build_model(glm_config(_Tok(), hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  n_routed_experts=4, num_experts_per_tok=2), 0).eval()


def trained(model, spec):
    """`model` under LoRA with non-zero B (a fresh adapter's B is zero: it would merge to the base exactly)."""
    wrapped = add_lora(model, spec, seed=0)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    return wrapped


def test_merged_weights_are_base_plus_scaled_BA():
    base = qwen2()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    policy = trained(base, LoraSpec(rank=4, alpha=8))  # scale alpha / r = 2
    assert has_lora(policy)
    merged = rollout_state_dict(policy)
    assert list(merged) == list(before)  # the base model's names, in its order
    inner = policy.get_base_model()
    for name in before:
        module, _, leaf = name.rpartition(".")
        layer = inner.get_submodule(module)
        if leaf == "weight" and hasattr(layer, "lora_A"):
            A, B = layer.lora_A["default"].weight, layer.lora_B["default"].weight  # [r, in], [out, r]
            torch.testing.assert_close(merged[name], before[name] + 2.0 * B @ A, rtol=0, atol=1e-6)
            assert not torch.equal(merged[name], before[name])
        else:  # untouched: the policy's own tensor, not a copy
            assert torch.equal(merged[name], before[name])
            assert merged[name].data_ptr() == policy.get_base_model().state_dict()[name.replace(
                leaf, f"base_layer.{leaf}") if hasattr(layer, "lora_A") else name].data_ptr()
    adapted = {n.rsplit(".", 3)[0].rsplit(".", 1)[-1] for n, p in policy.named_parameters() if p.requires_grad}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # the default


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp8"])
def test_engine_after_a_push_computes_what_the_peft_model_computes(precision):
    """glm4_moe: attention adapted as Linear layers, the routed experts' fused 3-D parameters by peft's ParamWrapper
    (one adapter per expert). The colocated engine (share=True) gets the merged weights on the base architecture."""
    policy = trained(glm(), LoraSpec(rank=4, alpha=8))
    adapted = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert any("experts" in n for n in adapted) and not any("shared_experts" in n or "layers.0.mlp" in n
                                                             for n in adapted)  # peft's mapping on glm4_moe
    engine = make_engine("inprocess", policy, 0, precision, share=True)
    assert not has_lora(engine.model) and "lora" not in " ".join(engine.model.state_dict())
    WeightSync(precision, bucket_mb=0.05).push(policy, engine, version=3)  # several buckets
    assert engine.version == 3
    ids = torch.randint(2, 96, (3, 12))
    with torch.no_grad():
        want = policy(input_ids=ids).logits
        got = engine.model(input_ids=ids).logits.float()
        unmerged = merged_model(policy).state_dict()  # peft's own merge_and_unload
    tolerance = {"fp32": 1e-5, "bf16": 0.05, "fp8": 0.5}[precision]
    assert (want - got).abs().max() < tolerance
    if precision == "fp32":
        # shared: the frozen tensors are the policy's own, the adapted ones the engine's (merged)
        inner = policy.get_base_model()
        assert engine.model.model.embed_tokens.weight.data_ptr() == inner.model.embed_tokens.weight.data_ptr()
        assert engine.model.model.layers[0].self_attn.q_proj.weight.data_ptr() != \
            inner.model.layers[0].self_attn.q_proj.base_layer.weight.data_ptr()
        for name, tensor in rollout_state_dict(policy).items():
            torch.testing.assert_close(tensor, unmerged[name], rtol=0, atol=1e-6)
            torch.testing.assert_close(engine.model.state_dict()[name], tensor, rtol=0, atol=0)


def test_only_the_adapters_train_and_logprobs_run_through_peft():
    from slide.config import AlgoSpec, TrainSpec
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer
    policy = add_lora(glm(), LoraSpec(rank=4, alpha=8), seed=0)
    frozen = {n: p.clone() for n, p in policy.named_parameters() if not p.requires_grad}
    trainer = PolicyTrainer(policy, TrainSpec(lr=1e-2), AlgoSpec(), 1.0, 0, 1e-3)
    assert {id(p) for g in trainer.opt.param_groups for p in g["params"]} == \
        {id(p) for n, p in policy.named_parameters() if "lora_" in n}
    samples = [Sample(prompt_ids=[5, 6, 7], response_ids=[8, 9, 10], loss_mask=[1, 1, 1],
                      behaviour_logprobs=[-4.0] * 3, version=0, problem=None, group=0) for _ in range(2)]
    stats = trainer.step(samples, {id(s): a for s, a in zip(samples, (-1.0, 1.0))})
    assert stats["grad_norm"] > 0
    moved = [n for n, p in policy.named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert moved  # B left zero
    assert all(torch.equal(p, frozen[n]) for n, p in policy.named_parameters() if not p.requires_grad)
