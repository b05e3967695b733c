"""Cold-start SFT: teach the chat format and a reasoning style from generated, verified solutions.

    slide sft slide/configs/demo_sft.yaml steps=400 examples=2000
    slide sft --resume RUN_DIR          # continue from its last checkpoint (save_every): exactly the same run

Examples are chat-formatted (GLM template) with the prompt masked out of the loss; whole examples are
packed into fixed-length rows with a block-diagonal causal mask and per-example positions, so packing
never lets one example see another; the loss is the mean over all target tokens of a batch.
"""
from __future__ import annotations

import math
import random
import time
from pathlib import Path

import torch

from slide.agent.families import AGENT_FAMILIES, is_agentic
from slide.config import SFTConfig
from slide.device import memory_metrics, precision_for, resolve_device
from slide.engine import DTYPES
from slide.engine.inprocess import InProcessEngine
from slide.errors import UserError
from slide.eval.passk import eval_metrics, evaluate, verifiers
from slide.model.load import load_policy
from slide.model.lora import add_lora, has_lora, save_adapter
from slide.model.tiny import ExpertLoad
from slide.model.chat import chat_format
from slide.packing import first_fit, packed_backward, to_tensors
from slide.model.tokenizer import tokenizer_for
from slide.rl.data import PromptSource, eval_problems
from slide.rundir import RunDir, load_state, set_rng_state
from slide.tasks import parse_task_specs
from slide.tasks.base import Problem


def encode_example(tok, problem: Problem, thinking: bool) -> tuple[list[int], list[int]]:
    """(ids, loss mask) of prompt + target; only the target (what the model writes) is trained. Agentic
    families give a whole tool-use conversation: every assistant turn trained, observations masked."""
    if is_agentic(problem):
        trace = AGENT_FAMILIES[problem.family].trace
        if trace is None:
            raise UserError(f"SFT data: {problem.family} has no reference conversations to train on "
                            f"(families with SFT traces: {', '.join(k for k, f in AGENT_FAMILIES.items() if f.trace)})")
        t = trace(problem)
        return chat_format(tok).conversation(t["messages"], t["tools"], thinking)
    # the template's own rendering of the assistant's turn (the built-in model's GLM template included)
    return chat_format(tok).example([{"role": "user", "content": problem.prompt}], problem.reasoning,
                                    problem.solution or problem.answer, thinking)

def pack(examples: list[tuple[list[int], list[int]]], seq_len: int, pad: int):
    """Greedy first-fit packing of whole examples into rows (slide/packing.py): ids, labels, positions,
    block-diagonal mask and the real-token mask."""
    return to_tensors(first_fit(examples, seq_len), seq_len, pad)


class ExampleStream:
    """SFT problems: a fixed labelled pool of `examples` (shuffled each epoch) or fresh ones (examples=0)."""

    def __init__(self, cfg: SFTConfig, specs, held_out: list[Problem]):
        self.source = PromptSource(specs, cfg.seed, held_out)
        self.pool = self.source.next(cfg.examples) if cfg.examples else None
        self.rng = random.Random(cfg.seed + 1)
        self.order: list[int] = []

    def next(self, k: int) -> list[Problem]:
        if self.pool is None:
            return self.source.next(k)
        out = []
        while len(out) < k:
            if not self.order:
                self.order = list(range(len(self.pool)))
                self.rng.shuffle(self.order)
            out.append(self.pool[self.order.pop()])
        return out

    def state_dict(self) -> dict:
        return {"source": self.source.state_dict(), "rng": self.rng.getstate(), "order": list(self.order)}

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state["source"])
        self.rng.setstate(state["rng"])
        self.order = list(state["order"])


def backward(model, load: ExpertLoad, batches: list[list[tuple[list[int], list[int]]]], seq_len: int,
             pad: int, autocast: torch.dtype = torch.float32) -> tuple[float, int]:
    """Gradients of the mean cross-entropy over the target tokens of all `batches` (each packed and run on its
    own: gradient accumulation), exactly what one batch of all their examples gives (slide/packing.py)."""
    device = next(model.parameters()).device
    return packed_backward(model, load, [[t.to(device) for t in pack(b, seq_len, pad)] for b in batches], autocast)


def run(cfg: SFTConfig, run_dir: RunDir, ckpt: Path | None = None, progress=None) -> dict:
    """Train (from `ckpt` when resuming), evaluating held-out greedy pass@1 every eval_every steps and
    checkpointing every save_every; saves `final/` (an HF folder)."""
    device = resolve_device(cfg.device)
    autocast = DTYPES[precision_for(cfg.precision, device)]
    torch.manual_seed(cfg.seed)
    tok = tokenizer_for(cfg.model.init, cfg.model.tool_format)  # the checkpoint's own, or the built-in model's
    # fp32 master weights (with LoRA: frozen, the adapters train); a resumed LoRA run: the base from model.init,
    # the adapter (and router biases) from the checkpoint
    init = str(ckpt / "model") if ckpt and not cfg.lora.rank else cfg.model.init
    model = add_lora(load_policy(init, cfg.model.size, tok, cfg.seed, device=device), cfg.lora, cfg.seed,
                     ckpt / "adapter" if ckpt and cfg.lora.rank else None, where="lora")
    load = ExpertLoad(model)
    trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
    opt = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    specs = parse_task_specs(cfg.data)  # a dataset is read once
    held_out = eval_problems(specs, cfg.eval_prompts, cfg.seed)
    verify = verifiers(specs)
    stream = ExampleStream(cfg, specs, held_out)
    # shares the weights: eval needs no sync (a LoRA model evaluates through peft's layers: the merged model's
    # outputs up to float rounding)
    engine = InProcessEngine(model, pad_token_id=tok.pad_token_id)
    lengths = [len(encode_example(tok, p, cfg.thinking)[0]) for p in stream.next(32)]
    if max(lengths) > cfg.seq_len:  # packing would cut examples, and the cut ones could train on nothing
        raise UserError(f"seq_len={cfg.seq_len}: examples of {cfg.data} are up to {max(lengths)} tokens; "
                        f"set seq_len >= {max(lengths) + max(lengths) // 4} (room for longer ones)")
    mean_len = sum(lengths) / len(lengths)
    per_batch = max(1, int(cfg.batch_tokens / mean_len))
    at = {"step": 0, "seen_tokens": 0, "elapsed_s": 0.0, "last": {}}
    if ckpt:
        state = load_state(ckpt)
        opt.load_state_dict(state["optim"])
        stream.load_state_dict(state["stream"])
        set_rng_state(state["rng"])
        at = state["at"]
    last, seen_tokens = at["last"], at["seen_tokens"]
    t0 = time.perf_counter() - at["elapsed_s"]
    for step in range(at["step"] + 1, cfg.steps + 1):
        lr = cfg.lr * min(1.0, step / max(1, cfg.warmup_steps))
        lr *= 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps))  # cosine to 10%, as GLM
        for g in opt.param_groups:
            g["lr"] = lr
        batches = [[encode_example(tok, p, cfg.thinking) for p in stream.next(per_batch)]
                   for _ in range(cfg.grad_accum)]
        model.train()
        opt.zero_grad(set_to_none=True)
        loss, targets = backward(model, load, batches, cfg.seq_len, tok.pad_token_id, autocast)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        balance = load.update_bias(cfg.model.router_bias_rate)
        model.eval()
        seen_tokens += targets
        metrics = {"loss": loss, "grad_norm": float(grad_norm), "lr": lr, "target_tokens": seen_tokens,
                   "elapsed_s": time.perf_counter() - t0, **balance, **memory_metrics(device)}
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            last = evaluate(engine, tok, held_out, verify, k=1, thinking=cfg.thinking, chance=True)
            run_dir.log_eval(step, last)
            metrics.update(eval_metrics(last["summary"]))
        run_dir.log_metrics(step, metrics)
        if progress:
            progress(step, metrics)
        if (cfg.stop_at_pass_rate is not None and metrics.get("eval_pass@1", 0.0) >= cfg.stop_at_pass_rate
                and not metrics.get("eval_lucky")):  # a pass rate that guesses reach is no cold start
            break
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            at = {"step": step, "seen_tokens": seen_tokens, "elapsed_s": time.perf_counter() - t0, "last": last}
            run_dir.save_checkpoint(step, model, tok, {"at": at, "optim": opt.state_dict(),
                                                       "stream": stream.state_dict()}, keep=2)
    if has_lora(model):
        save_adapter(model, run_dir.path / "adapter", tok)  # the adapter in peft's format; then, last, as the mark
    run_dir.save_final(model, tok)  # of a finished run: the merged weights (what slide rl model.init loads)
    return last
