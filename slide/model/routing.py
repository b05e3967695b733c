"""Rollout routing replay (R3, arXiv 2510.11370): the engine records which experts each token was routed to, the
trainer's forward routes every token to those same experts.

    recorder = RouteRecorder(model, rows=B, prompt_len=P, max_new_tokens=N)      # in the engine
    with recorder.hooks():
        ...prefill (step 0), then one decode forward per step: recorder.at(step, live_rows)...
    routes = recorder.routes(row, prompt_len_of_row, tokens_of_row)   # [moe layers, positions, top_k]

    replay = RoutingReplay(model, enabled=True)                                  # in the trainer
    with replay.routes(samples, device):   # through the forward AND the backward of that micro-batch
        logp = response_logprobs(model, ...)

Why: an MoE router's top-k is discontinuous. The engine (bf16 or fp8 weights, KV-cache decode) and the trainer
(fp32 master weights, one full forward) compute slightly different router scores, and where two experts' scores
are close they pick different experts: ~10% of router decisions differ on large MoE models, and a token whose
experts differ gets a different logprob. Replaying the engine's experts removes that part of the mismatch; the
gate weights over the replayed experts still come from the trainer's own router scores, so the router keeps its
gradient (as slime's and verl's R3 do).

Routes of a sequence cover the positions the engine ran a forward on: every prompt token (at prefill, or the
prefill of a later agent turn for environment tokens) and every response token but the last, which the engine
samples and never feeds back. Position t holds the top-k expert ids of token t, sorted, in uint8 (int16 past
256 experts): ~1.5 KB per sample of the demo model, cheap to pickle across Ray (an engine batch's buffer is
layers x top_k bytes per token, against kilobytes per token of its KV cache). The trainer's last position
predicts nothing it scores, so it, padding, and any position without a route keep the trainer's own routing.

Only for routers shaped like transformers' glm4_moe / deepseek_v3 gates (`routers()` in slide/model/tiny.py):
forward(hidden) -> (router_logits [N, E], weights [N, k], indices [N, k]) with sigmoid scores.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

from slide.model.tiny import routers


def route_dtype(num_experts: int) -> torch.dtype:
    """The smallest integer dtype that holds every expert id."""
    return torch.uint8 if num_experts <= 256 else torch.int16


def extend_routes(old: torch.Tensor | None, new: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """A sequence's routes after another engine call on it: the positions `old` covers keep the routes they were
    sampled with (a later prefill recomputes them, maybe on newer weights); `new` adds the rest (the last token
    of the turn before, environment tokens, the new turn). Cut to `length` positions (a turn cut to its budget)."""
    if new is None:
        return None if old is None else old[:, :length]
    merged = new if old is None else torch.cat([old, new[:, old.shape[1]:]], dim=1)
    return merged[:, :length].clone()  # no view into a whole engine batch's buffer (pickled with the sample)


class RouteRecorder:
    """Forward hooks on the routers of an engine's model that write each forward's top-k ids into per-row
    buffers. Step 0 is the prefill of B left-padded prompts ([B, P] inputs); step s > 0 decodes one token for
    each of the rows still live (original row indices `live`), the routes of response token s - 1."""

    def __init__(self, model, rows: int, prompt_len: int, max_new_tokens: int):
        self.gates = routers(model)
        k, dtype = self.gates[0].top_k, route_dtype(self.gates[0].num_experts)
        layers = len(self.gates)
        self.prefill = torch.zeros((layers, rows, prompt_len, k), dtype=dtype)  # [layers, B, P, k]
        self.decode = torch.zeros((layers, rows, max(max_new_tokens - 1, 0), k), dtype=dtype)  # [layers, B, N-1, k]
        self._step, self._live = 0, None

    def at(self, step: int, live: torch.Tensor) -> None:
        """The next forward is `step` for the rows `live` (original indices [b])."""
        self._step, self._live = step, live.cpu()

    @contextmanager
    def hooks(self):
        handles = [g.register_forward_hook(self._hook(i)) for i, g in enumerate(self.gates)]
        try:
            yield self
        finally:
            for h in handles:
                h.remove()

    def _hook(self, layer: int):
        def hook(module, args, output):
            idx = output[2].sort(dim=-1).values.to("cpu", self.prefill.dtype)  # [b * s, k], row-major over (b, s)
            if self._step == 0:
                self.prefill[layer] = idx.view(self.prefill.shape[1:])
            else:
                self.decode[layer, self._live, self._step - 1] = idx
        return hook

    def routes(self, row: int, prompt_len: int, tokens: int) -> torch.Tensor:
        """Row `row`'s routes: its prompt (the last prompt_len columns of the left-padded prefill), then its first
        tokens - 1 response tokens: [layers, prompt_len + tokens - 1, k]."""
        P = self.prefill.shape[2]
        return torch.cat([self.prefill[:, row, P - prompt_len:], self.decode[:, row, :max(tokens - 1, 0)]], dim=1)


class RoutingReplay:
    """Forward hooks on the trainer model's routers that, inside `routes(samples)`, replace each token's top-k
    experts with the engine's recorded ones and recompute the gate weights over them from the trainer's scores.
    Disabled (algo.routing_replay false), or outside `routes()`, the model routes as it always does.

    Metrics since the last pop (training forwards only, each micro-batch once; recomputation under gradient
    checkpointing not counted):
      routing_replay_fallback  share of trained sequences without recorded routes (vLLM engine, older samples),
                               which routed on their own
      routing_mismatch_frac    share of replayed expert choices (token, layer, slot) that the trainer's own router
                               would have made differently: the decisions R3 corrected
    """

    def __init__(self, model, enabled: bool):
        self.enabled = enabled
        self.gates = routers(model) if enabled else []
        self._batch: tuple[torch.Tensor, torch.Tensor] | None = None  # (given [N] bool, routes [layers, N, k] long)
        self._count = False  # count the metrics of the forward under way (training forward, not yet counted)
        self._counted: set[int] = set()  # layers counted in this micro-batch
        self._sums = dict(seqs=0, fallback=0, choices=0, mismatched=0)
        for i, gate in enumerate(self.gates):
            gate.register_forward_hook(self._hook(i))

    @contextmanager
    def routes(self, samples: list, device):
        """Replay `samples`' routes in every router forward inside (the micro-batch as collate() right-pads it:
        N = len(samples) * the longest prompt + response). Stay inside through the backward pass: gradient
        checkpointing recomputes the routers there, and must route as the forward did."""
        if not self.enabled:
            yield
            return
        self._batch = self._collate(samples, device)
        self._count, self._counted = torch.is_grad_enabled(), set()
        if self._count:
            self._sums["seqs"] += len(samples)
            self._sums["fallback"] += sum(s.routes is None for s in samples)
        try:
            yield
        finally:
            self._batch = None

    def _collate(self, samples: list, device) -> tuple[torch.Tensor, torch.Tensor]:
        L = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
        k = self.gates[0].top_k
        given = torch.zeros((len(samples), L), dtype=torch.bool)
        routes = torch.zeros((len(self.gates), len(samples), L, k), dtype=torch.long)
        for i, s in enumerate(samples):
            r = s.routes
            if r is None:
                continue
            n = len(s.prompt_ids) + len(s.response_ids)
            if r.shape[0] != len(self.gates) or r.shape[2] != k or r.shape[1] > n:
                raise ValueError(f"routing replay: a sample's routes {tuple(r.shape)} do not fit this model "
                                 f"({len(self.gates)} MoE layers, top-{k}) and its {n} tokens")
            given[i, :r.shape[1]] = True
            routes[:, i, :r.shape[1]] = r.long()
        return given.view(-1).to(device), routes.view(len(self.gates), -1, k).to(device)

    def _hook(self, layer: int):
        def hook(module, args, output):
            if self._batch is None:
                return None  # not a replayed forward: the router's own output
            logits, weights, own = output  # [N, E], [N, k], [N, k]
            given, routes = self._batch
            if len(given) != len(own):
                raise RuntimeError(f"routing replay: router saw {len(own)} tokens, the micro-batch has {len(given)}")
            idx = torch.where(given[:, None], routes[layer], own)
            if self._count and layer not in self._counted:
                self._counted.add(layer)
                self._count_mismatch(own[given], idx[given])
            scores = logits.sigmoid()  # the trainer's own scores: gradient reaches the router weight
            w = scores.gather(1, idx)
            if module.norm_topk_prob:
                w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
            return logits, (w * module.routed_scaling_factor).to(weights.dtype), idx
        return hook

    @torch.no_grad()
    def _count_mismatch(self, own: torch.Tensor, replayed: torch.Tensor) -> None:
        chosen = (replayed[:, :, None] == own[:, None, :]).any(-1)  # [n, k]: the trainer chose this expert too
        self._sums["choices"] += chosen.numel()
        self._sums["mismatched"] += int((~chosen).sum())

    def pop_stats(self) -> dict[str, float]:
        """The metrics since the last pop ({} when disabled); resets them."""
        if not self.enabled:
            return {}
        s = self._sums
        out = {"routing_replay_fallback": s["fallback"] / max(s["seqs"], 1),
               "routing_mismatch_frac": s["mismatched"] / max(s["choices"], 1)}
        self._sums = dict(seqs=0, fallback=0, choices=0, mismatched=0)
        return out
