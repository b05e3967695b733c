"""Block-wise FP8 codec: hand-derived roundings, the error bound, edge shapes, name classification, export."""
import json
import pickle

import pytest
import torch
from safetensors.torch import load_file

from slide.errors import UserError
from slide.weights.export import export_fp8
from slide.weights.fp8 import (FP8_DTYPE, Fp8Weight, dequantize_blockwise, error_bound, is_quantizable,
                               quantize_blockwise)


def round_trip(w):
    q, s = quantize_blockwise(w)
    return q, s, dequantize_blockwise(q, s, torch.float32)


def test_hand_rounding_with_unit_scale():
    # block amax 448 -> scale 1; e4m3 steps: 32 in [256, 448], 2 in [16, 32), 2^-9 below 2^-6 (subnormal)
    w = torch.zeros(2, 4)
    w[0] = torch.tensor([448.0, 300.0, 17.0, 19.0])  # 300 -> 288 (12 from 288, 20 from 320); 17 ties -> even 16
    w[1] = torch.tensor([-1.0, 0.001, 0.0029, 3 * 2.0 ** -10])  # in steps of 2^-9: 0.51 -> 1, 1.48 -> 1, 1.5 -> 2
    q, s, d = round_trip(w)
    assert q.dtype == FP8_DTYPE and s.dtype == torch.float32 and s.shape == (1, 1) and s.item() == 1.0
    assert d[0].tolist() == [448.0, 288.0, 16.0, 20.0]
    assert d[1].tolist() == [-1.0, 2.0 ** -9, 2.0 ** -9, 2.0 ** -8]


def test_scale_is_block_amax_over_448_and_edge_blocks_are_logical():
    w = torch.zeros(130, 70)
    w[3, 5], w[129, 0] = -2.0, 0.5  # rows 128-129 form a 2-row edge block
    q, s, d = round_trip(w)
    assert q.shape == (130, 70) and s.shape == (2, 1)
    assert torch.allclose(s, torch.tensor([[2.0 / 448], [0.5 / 448]]))
    assert torch.equal(d, w)  # each block's amax maps to 448 exactly; zeros stay zero


@pytest.mark.parametrize("shape", [(256, 384), (300, 260), (130, 70), (1, 1), (129, 257)])
def test_random_round_trip_within_tight_bound(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0)) * 0.02
    q, s, d = round_trip(w)
    assert q.shape == w.shape and s.shape == (-(-shape[0] // 128), -(-shape[1] // 128))
    err, bound = (d - w).abs(), error_bound(w, s)
    assert (err <= bound).all()
    if w.numel() > 1000:
        assert (err / bound).max() > 0.9  # tight: some element loses nearly half a step
        # never worse than 1/28 of the block amax: half of the top binade's step (32 / 2) / 448
        amax = torch.nn.functional.pad(w.abs(), (0, 127, 0, 127))[:s.shape[0] * 128, :s.shape[1] * 128]
        amax = amax.reshape(s.shape[0], 128, s.shape[1], 128).amax(dim=(1, 3))
        worst = torch.nn.functional.pad(err, (0, 127, 0, 127))[:s.shape[0] * 128, :s.shape[1] * 128]
        worst = worst.reshape(s.shape[0], 128, s.shape[1], 128).amax(dim=(1, 3))
        assert (worst <= amax / 28 * (1 + 1e-6)).all()
    assert torch.equal(dequantize_blockwise(q, s).float(), d.bfloat16().float())  # default dtype is bf16


def test_all_zero_and_denormal_blocks_are_finite():
    q, s, d = round_trip(torch.zeros(200, 300))
    assert torch.equal(s, torch.ones(2, 3)) and torch.equal(d, torch.zeros(200, 300))
    w = torch.full((4, 4), 1e-40)  # float32 denormals: the scale floors at the smallest normal
    q, s, d = round_trip(w)
    assert torch.isfinite(s).all() and torch.isfinite(d).all() and (d - w).abs().max() <= 1e-39


def test_outlier_only_affects_its_own_block():
    g = torch.Generator().manual_seed(1)
    w = torch.where(torch.rand(256, 256, generator=g) < 0.5, -1e-3, 1e-3)
    spiked = w.clone()
    spiked[5, 7] = 1e4
    _, s, d = round_trip(spiked)
    _, _, d_clean = round_trip(w)
    assert d[5, 7] == 1e4  # the outlier is its block's amax: exact
    assert (d - spiked).abs().max() <= 1e-3 and ((d - spiked).abs() <= error_bound(spiked, s)).all()
    assert torch.equal(d[:128, 128:], d_clean[:128, 128:]) and torch.equal(d[128:], d_clean[128:])


def test_stacked_experts_quantize_each_expert_alone():
    w = torch.randn(4, 256, 130, generator=torch.Generator().manual_seed(2))
    w[2] *= 1000  # a different magnitude per expert must not leak into the others' scales
    q, s = quantize_blockwise(w)
    assert q.shape == w.shape and s.shape == (4, 2, 2)
    for e in range(4):
        qe, se = quantize_blockwise(w[e])
        assert torch.equal(q[e].float(), qe.float()) and torch.equal(s[e], se)
    d = dequantize_blockwise(q, s, torch.float32)
    assert ((d - w).abs() <= error_bound(w, s)).all()


def test_rejects_non_finite_and_bad_shapes():
    for bad in (float("inf"), float("nan")):
        w = torch.zeros(3, 3)
        w[1, 1] = bad
        with pytest.raises(ValueError, match="inf or NaN"):
            quantize_blockwise(w)
    with pytest.raises(ValueError, match="out, in"):
        quantize_blockwise(torch.zeros(5))
    q, s = quantize_blockwise(torch.ones(130, 10))
    with pytest.raises(ValueError, match="does not fit"):
        dequantize_blockwise(q, s[:1])


def test_fp8_weight_unpacks_and_pickles():
    w = Fp8Weight(*quantize_blockwise(torch.randn(10, 300)))
    q, s = w
    back = pickle.loads(pickle.dumps(w))
    assert back.q.dtype == FP8_DTYPE and torch.equal(back.q.view(torch.uint8), q.view(torch.uint8))
    assert torch.equal(back.scale_inv, s) and w.nbytes == 10 * 300 + 4 * 3


def test_classification_of_the_glm4_moe_parameters(model):
    quantized = {n.split(".", 3)[-1] if ".layers." in n else n
                 for n, t in model.state_dict().items() if is_quantizable(n, t)}
    assert quantized == {
        "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",  # dense first layer
        "mlp.shared_experts.gate_proj.weight", "mlp.shared_experts.up_proj.weight",
        "mlp.shared_experts.down_proj.weight",
        "mlp.experts.gate_up_proj", "mlp.experts.down_proj",  # fused [E, out, in]
    }
    t2, t1 = torch.zeros(4, 4), torch.zeros(4)
    assert is_quantizable("model.layers.3.mlp.experts.7.up_proj.weight", t2)  # per-expert name on disk
    for kept in ("lm_head.weight", "model.embed_tokens.weight", "model.layers.1.mlp.gate.weight",
                 "model.norm.weight"):
        assert not is_quantizable(kept, t2)
    assert not is_quantizable("model.layers.0.self_attn.q_proj.bias", t1)
    assert not is_quantizable("model.layers.1.mlp.gate.e_score_correction_bias", t1)


def test_export_fp8_checkpoint(model, tok, tmp_path):
    src, dst = tmp_path / "model", tmp_path / "fp8"
    model.save_pretrained(src)
    tok.save_pretrained(src)
    stats = export_fp8(src, dst)
    config = json.loads((dst / "config.json").read_text())
    qc = config["quantization_config"]
    assert {k: qc[k] for k in ("quant_method", "fmt", "activation_scheme", "weight_block_size")} == {
        "quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
    assert qc["modules_to_not_convert"] == ["lm_head", "model.embed_tokens", "model.layers.1.mlp.gate",
                                            "model.layers.2.mlp.gate", "model.layers.3.mlp.gate"]
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        assert (dst / f).read_bytes() == (src / f).read_bytes()

    before, after = load_file(src / "model.safetensors"), load_file(dst / "model.safetensors")
    assert set(after) == set(before) | {f"{n}_scale_inv" for n in stats["quantized"]}
    assert len(stats["quantized"]) == 4 * 4 + 3 + 3 * (3 + 24 * 3)  # attn, dense MLP, shared + per-expert
    for name, w in before.items():
        if name in stats["quantized"]:
            q, s = after[name], after[f"{name}_scale_inv"]
            assert q.dtype == FP8_DTYPE and s.dtype == torch.float32
            assert ((dequantize_blockwise(q, s, torch.float32) - w).abs() <= error_bound(w, s)).all(), name
        elif name.endswith("e_score_correction_bias"):
            assert after[name].dtype == torch.float32 and torch.equal(after[name], w)
        else:
            assert after[name].dtype == torch.bfloat16 and torch.equal(after[name], w.bfloat16()), name

    with pytest.raises(UserError, match="not empty"):
        export_fp8(src, dst)
    with pytest.raises(UserError, match="already quantized"):
        export_fp8(dst, tmp_path / "again")
