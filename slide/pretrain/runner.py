"""Staged pre-training and mid-training: the stages loop, checkpoints, exact resume, summary.json and the plot.

    slide pretrain slide/configs/pretrain_tiny.yaml [key=value ...]
    slide pretrain --resume RUN_DIR

Each stage draws documents from its weighted mixture (streams.py), packs them into rows of its seq_len
(packer.py) and trains under one learning-rate schedule over all stages (schedule.py) with Muon + AdamW (optim.py)
and GLM's loss-free router balance (slide/model/tiny.py's ExpertLoad); the RoPE base is set per stage (it is a
field of the HF config, so every checkpoint carries it). At a stage's end the model is evaluated (evaluate.py)
and checkpointed. A checkpoint holds the weights, both optimizers' states, every stream's position, the mixture's
generator, the documents waiting to be packed and all RNG states: a killed run resumed from it continues exactly
as if never stopped.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from slide.pretrain.config import PretrainConfig, StageSpec
from slide.device import memory_metrics, precision_for, resolve_device
from slide.engine import DTYPES
from slide.errors import UserError
from slide.model.load import load_policy
from slide.model.tiny import ExpertLoad
from slide.model.tokenizer import tokenizer_for
from slide.packing import packed_backward, to_tensors
from slide.pretrain import corpora
from slide.pretrain.evaluate import evaluate_stage
from slide.pretrain.optim import Optimizers
from slide.pretrain.packer import Packer
from slide.pretrain.schedule import plan
from slide.pretrain.streams import Mixture, Stream
from slide.rundir import RunDir, load_state, set_rng_state

TIME_KEYS = ("elapsed_s", "step_s", "tokens_per_s")  # differ between a resumed run and a straight one


def set_rope_theta(model, theta: float) -> None:
    """Change the RoPE base of a model in place: its config (what a checkpoint saves) and the rotary table."""
    config = model.config
    params = dict(getattr(config, "rope_parameters", None) or {})
    if params.get("rope_type", "default") != "default":
        raise UserError(f"stages.rope_theta: the model's RoPE is {params['rope_type']!r}; only the default "
                        f"(unscaled) RoPE can change its base here")
    params["rope_theta"] = theta
    config.rope_parameters = params
    rotary = model.base_model.rotary_emb
    inv_freq, scale = rotary.compute_default_rope_parameters(config, rotary.inv_freq.device)
    rotary.inv_freq.copy_(inv_freq)
    rotary.original_inv_freq.copy_(inv_freq)
    rotary.attention_scaling = scale


def rope_theta_of(model) -> float:
    return float(model.config.rope_parameters["rope_theta"])


def mixtures(cfg: PretrainConfig, tok) -> list[tuple[Mixture, dict[str, list[str]]]]:
    """Per stage: its mixture (streams opened, positioned after the held-out documents) and the held-out
    documents by source. Opening them all first reports a bad data file before anything trains."""
    out = []
    for i, stage in enumerate(cfg.stages):
        streams = []
        for src in stage.mixture:
            path = src.path
            if path.startswith(corpora.BUILTIN):
                path = corpora.build(path[len(corpora.BUILTIN):], cfg.corpora_dir, tok, cfg.seed)
            streams.append(Stream(path, src.field, cfg.eval.held_out_docs))
        mix = Mixture([s.name for s in stage.mixture], streams, [s.weight for s in stage.mixture], cfg.seed * 1009 + i)
        out.append((mix, {s.name: st.held_out for s, st in zip(stage.mixture, streams)}))
    return out


def train_step(model, load, opt, packer: Packer, rows: int, lr: float, cfg: PretrainConfig, stage: StageSpec,
               autocast) -> dict:
    """One optimizer step on `rows` packed rows (micro-batches of cfg.micro_batch_rows: gradient accumulation)."""
    device = next(model.parameters()).device
    batch = packer.rows(rows)
    micro = [[t.to(device) for t in to_tensors(batch[i:i + cfg.micro_batch_rows], stage.seq_len,
                                               packer.tok.pad_token_id)]
             for i in range(0, rows, cfg.micro_batch_rows)]
    opt.set_lr(lr)
    opt.zero_grad()
    loss, targets = packed_backward(model, load, micro, autocast)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    real = sum(len(ids) for row in batch for ids, _ in row)
    return {"loss": loss, "grad_norm": float(grad_norm), "lr": lr, "rows": rows, "seq_len": stage.seq_len,
            "pad_frac": 1 - real / (rows * stage.seq_len), "pieces_per_row": sum(len(r) for r in batch) / rows,
            **load.update_bias(cfg.model.router_bias_rate)}


def run(cfg: PretrainConfig, run_dir: RunDir, ckpt: Path | None = None, progress=None) -> dict:
    """Train every stage (from `ckpt` when resuming); writes final/ (an HF folder), summary.json and plot.png."""
    device = resolve_device(cfg.device)
    autocast = DTYPES[precision_for(cfg.precision, device)]
    torch.manual_seed(cfg.seed)
    tok = tokenizer_for(cfg.model.init, cfg.model.tool_format)
    data = mixtures(cfg, tok)
    state = load_state(ckpt) if ckpt else None
    init = str(ckpt / "model") if ckpt else cfg.model.init
    model = load_policy(init, cfg.model.size, tok, cfg.seed, device=device).train()
    load = ExpertLoad(model)
    opt = Optimizers(model, cfg.optimizer, cfg.schedule.lr, cfg.weight_decay, cfg.betas)
    steps = plan(cfg.stages, cfg.schedule)
    at = {"stage": 0, "k": 0, "step": 0, "tokens": 0, "packer": None, "summary": {}, "elapsed_s": 0.0}
    if state:
        opt.load_state_dict(state["optim"])
        set_rng_state(state["rng"])
        at = state["at"]
    t0 = time.perf_counter() - at["elapsed_s"]
    for si in range(at["stage"], len(cfg.stages)):
        stage, (mixture, held_out) = cfg.stages[si], data[si]
        set_rope_theta(model, stage.rope_theta)
        packer = Packer(mixture, tok, stage.seq_len, stage.packing)
        if at["packer"] is not None:  # resuming inside this stage
            packer.load(at["packer"])
        for k in range(at["k"], len(steps[si])):
            rows, lr = steps[si][k]
            t1 = time.perf_counter()
            metrics = train_step(model, load, opt, packer, rows, lr, cfg, stage, autocast)
            at["step"] += 1
            at["tokens"] += rows * stage.seq_len
            dt = time.perf_counter() - t1
            metrics.update({"stage": si, "tokens": at["tokens"], "rope_theta": stage.rope_theta,
                            **{f"docs/{n}": d for n, d in zip(mixture.names, mixture.drawn)},
                            "step_s": dt, "tokens_per_s": rows * stage.seq_len / dt,
                            "elapsed_s": time.perf_counter() - t0, **memory_metrics(device)})
            run_dir.log_metrics(at["step"], metrics)
            if progress:
                progress(at["step"], metrics)
            if cfg.save_every and at["step"] % cfg.save_every == 0 and k + 1 < len(steps[si]):
                at.update(stage=si, k=k + 1, packer=packer.state(), elapsed_s=time.perf_counter() - t0)
                run_dir.save_checkpoint(at["step"], model, tok, {"at": at, "optim": opt.state_dict()}, keep=2)
        result = evaluate_stage(model, tok, held_out, stage.seq_len, cfg.eval.needle_lengths,
                                cfg.eval.needle_samples, cfg.seed, autocast, cfg.micro_batch_rows)
        at["summary"][stage.name] = {"step": at["step"], "tokens": at["tokens"], "seq_len": stage.seq_len,
                                     "rope_theta": stage.rope_theta, **result}
        run_dir.log_eval(at["step"], {"stage": stage.name, **result, "summary": _flat(result)})
        at.update(stage=si + 1, k=0, packer=None, elapsed_s=time.perf_counter() - t0)
        run_dir.save_checkpoint(at["step"], model, tok, {"at": at, "optim": opt.state_dict()}, keep=2)
    return finish(cfg, run_dir, model, tok, at["summary"])


def _flat(result: dict) -> dict[str, float]:
    """Scalars for TensorBoard: held_out_loss/<source>, needle_acc/<length>."""
    return {**{f"held_out_loss/{k}": v for k, v in result["held_out_loss"].items()},
            **{f"needle_acc/{k}": v for k, v in result["needle_accuracy"].items()}}


def finish(cfg: PretrainConfig, run_dir: RunDir, model, tok, summary: dict) -> dict:
    from slide.pretrain.report import plot_run
    run_dir.save_final(model, tok)
    out = {"stages": summary, "final": str(run_dir.path / "final"), "optimizer": cfg.optimizer}
    (run_dir.path / "summary.json").write_text(json.dumps(out, indent=2))
    plot_run(run_dir.path)
    return out
