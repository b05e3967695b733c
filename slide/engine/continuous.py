"""Continuous batching with per-step admission: a request joins the running batch at the next decode step.

    engine = ContinuousEngine(InProcessEngine(model))                    # starts its scheduler thread
    [[c]] = engine.generate([ids], params, n=1, generator=g, on_step=cb)  # from any thread; blocks until done
    engine.close()

BatchingEngine (batching.py) batches whole generate calls: a request that arrives while a batch decodes waits for
that batch to end, so a server's time to first token grows with its queue. Here one scheduler thread owns the
model and loops over decode steps of every active row. Between two steps it admits the requests that arrived: one
forward over their prompts (left-padded together), their first token sampled, and their KV cache merged into the
running one, both left-padded to a common length (each row's attention mask and explicit positions keep its view
its own). Rows leave the batch as they stop, and cache columns no row attends to any more are trimmed. This is how
vLLM's scheduler admits requests, without its paged cache: a merge copies the cache once per admission.

Each request samples with its own parameters (temperature, top_p, min/max new tokens, stop ids) and generator, and
its `on_step` (StepCallback) sees its own rows, numbered as in its own call (i * n + j). `load_weights` stops
admission, lets the running rows finish, loads, and resumes: every completion comes from one weight version.
An error inside a step is raised in the caller of every request that had rows in it; the scheduler goes on.

Used by `slide serve`. The RL paths keep InProcessEngine / BatchingEngine: their batches are fixed by the run,
so a run's tokens do not depend on when requests happened to arrive.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from slide.engine.batching import EngineWrapper
from slide.engine.inprocess import Completion, InProcessEngine, SamplingParams, StepCallback, sample_token
from slide.engine.kv_cache import growing_cache
from slide.watchdog import beat

TRIM_MIN = 16  # leading cache columns no row attends to are dropped once there are this many (and a quarter)


@dataclass
class Pending:
    """A submitted request: its rows' results fill in as they finish."""
    prompts: list[list[int]]
    params: SamplingParams
    n: int
    generator: torch.Generator | None
    on_step: StepCallback | None
    version: int = 0
    left: int = 0  # rows still generating
    result: list[Completion | None] = field(default_factory=list)
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def wait(self) -> list[list[Completion]]:
        """The completions, prompt-major (result[i][j]: sample j of prompt i), once every row is done."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return [self.result[i * self.n:(i + 1) * self.n] for i in range(len(self.prompts))]


@dataclass
class _Row:
    request: Pending
    index: int  # i * n + j in its request
    prompt_len: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    finish: str | None = None


class ContinuousEngine(EngineWrapper):
    """Wraps an InProcessEngine: concurrent generate calls share decode steps, each joining at the next one."""

    def __init__(self, engine: InProcessEngine, max_batch: int | None = None):
        if engine.record_routes:
            raise ValueError("ContinuousEngine does not record MoE routes (algo.routing_replay): use InProcessEngine")
        self.engine = engine
        self.max_batch = max_batch or engine.max_batch  # rows decoded together at most
        self._cond = threading.Condition()
        self._queue: list[Pending] = []
        self._loading = 0  # load_weights calls waiting: admission stops until the running rows are done
        self._closed = False
        self._busy = False  # a step is running (the model is in use)
        self.rows: list[_Row] = []  # the running batch, in cache order (scheduler thread only)
        self._cache = None
        self._mask: torch.Tensor | None = None  # [rows, cache columns]: 1 where a row attends
        self.steps = self.admissions = 0  # decode steps run; prefill calls that admitted requests
        self.requests = self.peak_rows = 0  # requests submitted; the most rows decoded together
        self._thread = threading.Thread(target=self._loop, name="slide-continuous", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ callers' side
    def generate(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
                 generator: torch.Generator | None = None, on_step: StepCallback | None = None
                 ) -> list[list[Completion]]:
        """For each prompt, n completions (result[i][j]: sample j of prompt i), decoded beside every other
        request's rows; `on_step` sees this call's rows after each of their steps and may stop them."""
        return self.submit(prompts, params, n, generator, on_step).wait()

    def submit(self, prompts: list[list[int]], params: SamplingParams, n: int = 1,
               generator: torch.Generator | None = None, on_step: StepCallback | None = None) -> Pending:
        """Queue a request and return at once (from any thread, an on_step callback included); `.wait()` on the
        result blocks until its rows are done and returns what generate would."""
        request = Pending(prompts, params, n, generator, on_step, left=len(prompts) * n,
                          result=[None] * (len(prompts) * n))
        if not request.left:
            request.done.set()
            return request
        with self._cond:
            if self._closed:
                raise RuntimeError("the engine is closed")
            self._queue.append(request)
            self.requests += 1
            self._cond.notify_all()
        return request

    def load_weights(self, named_tensors, version: int) -> int:
        """Load between two requests' lifetimes: admission pauses, running rows finish, then the weights change."""
        with self._cond:
            self._loading += 1
            while self.rows or self._busy:
                self._cond.wait()
            try:
                return self.engine.load_weights(named_tensors, version)
            finally:
                self._loading -= 1
                self._cond.notify_all()

    def close(self) -> None:
        """Stop the scheduler once the rows in flight are done; later generate calls raise."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join()

    # -------------------------------------------------------------------------------------- scheduler thread
    @torch.no_grad()  # grad mode is per thread: this one's must be off like a generate call's
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self.rows and not (self._queue and not self._loading) and not self._closed:
                    self._cond.wait()
                if self._closed and not self.rows and not self._queue:
                    return
                admit = [] if self._loading else self._take()
                self._busy = True
            try:
                with self.engine.packed.active(batch_hint=len(self.rows) + sum(len(r.prompts) * r.n for r in admit)):
                    if self.rows:
                        self._decode()
                    if admit:
                        self._admit(admit)
            except Exception as e:  # noqa: BLE001 - a failed step fails its requests, never the engine
                self._fail(admit, e)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _take(self) -> list[Pending]:
        """Queued requests, oldest first, while their rows fit beside the running ones (at least one request)."""
        room, out = self.max_batch - len(self.rows), []
        while self._queue and (len(self._queue[0].prompts) * self._queue[0].n <= room or not (out or self.rows)):
            request = self._queue.pop(0)
            room -= len(request.prompts) * request.n
            out.append(request)
        return out

    def _decode(self) -> None:
        """One token for every running row."""
        dev = self.engine.model.device
        ids = torch.tensor([[r.tokens[-1]] for r in self.rows], device=dev)
        positions = torch.tensor([[r.prompt_len + len(r.tokens) - 1] for r in self.rows], device=dev)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self.rows), 1))], dim=-1)
        logits = self.engine.next_logits(ids, self._mask, positions, self._cache)
        self.steps += 1
        keep = self._sample(self.rows, logits)
        self._select(keep)

    def _admit(self, requests: list[Pending]) -> None:
        """Prefill the new requests' prompts, sample their first tokens, merge their cache into the running one."""
        dev = self.engine.model.device
        rows = [_Row(r, i * r.n + j, len(p)) for r in requests for i, p in enumerate(r.prompts) for j in range(r.n)]
        for r in requests:
            r.version = self.engine.version
        ids, mask = self.engine.left_padded([row.request.prompts[row.index // row.request.n] for row in rows])
        cache = growing_cache(capacity=ids.shape[1] + max(r.params.max_new_tokens for r in requests))
        logits = self.engine.next_logits(ids, mask, (mask.cumsum(-1) - 1).clamp(min=0), cache)
        self.admissions += 1
        keep = self._sample(rows, logits)
        idx = [k for k, kept in enumerate(keep) if kept]
        if not idx:  # every new row ended at its first token
            return
        if len(idx) < len(rows):
            cache.batch_select_indices(torch.tensor(idx, dtype=torch.long, device=dev))
            mask, rows = mask[idx], [rows[k] for k in idx]
        self._merge(rows, cache, mask)

    def _sample(self, rows: list[_Row], logits: torch.Tensor) -> list[bool]:
        """Sample every row with its request's parameters (rows that share temperature and top_p and have no seeded
        generator in one call), record, stop, call each request's on_step. Returns which rows go on."""
        early = [k for k, row in enumerate(rows) if len(row.tokens) < row.request.params.min_new_tokens]
        for k in early:  # stop tokens held back until min_new_tokens
            logits[k, list(rows[k].request.params.stop_token_ids)] = float("-inf")
        groups: dict[tuple, list[int]] = {}
        for k, row in enumerate(rows):
            p, g = row.request.params, row.request.generator
            groups.setdefault((p.temperature, p.top_p, id(row.request) if g is not None else None), []).append(k)
        tokens, logprobs = [0] * len(rows), [0.0] * len(rows)
        for ks in groups.values():
            tok, lp = sample_token(logits[ks], rows[ks[0]].request.params, rows[ks[0]].request.generator)
            for k, t, l in zip(ks, tok.tolist(), lp.tolist()):
                tokens[k], logprobs[k] = t, l
        beat()  # progress, for a run's watchdog
        by_request: dict[int, list[int]] = {}
        for k, row in enumerate(rows):
            p = row.request.params
            row.tokens.append(tokens[k])
            row.logprobs.append(logprobs[k])
            if tokens[k] in p.stop_token_ids:
                row.finish = "stop"
            elif len(row.tokens) >= p.max_new_tokens:
                row.finish = "length"
            by_request.setdefault(id(row.request), []).append(k)
        for ks in by_request.values():
            request = rows[ks[0]].request
            if request.on_step is not None:
                halt = set(request.on_step([rows[k].index for k in ks], [tokens[k] for k in ks]) or ())
                for k in ks:
                    if rows[k].index in halt and rows[k].finish != "stop":
                        rows[k].finish = "abort"
        keep = [row.finish is None for row in rows]
        for row in rows:
            if row.finish is not None:
                self._finish(row)
        return keep

    def _finish(self, row: _Row) -> None:
        request = row.request
        request.result[row.index] = Completion(row.tokens, row.logprobs, row.finish, request.version)
        request.left -= 1
        if request.left == 0:
            request.done.set()

    def _select(self, keep: list[bool]) -> None:
        """Drop the finished rows from the batch and the cache; trim columns no row attends to any more."""
        if all(keep):
            return
        idx = [k for k, kept in enumerate(keep) if kept]
        self.rows = [self.rows[k] for k in idx]
        if not self.rows:
            self._cache, self._mask = None, None
            return
        self._cache.batch_select_indices(torch.tensor(idx, dtype=torch.long, device=self._mask.device))
        self._mask = self._mask[idx]
        first = int(self._mask.any(0).long().argmax())  # the first column some row attends to
        if first >= max(TRIM_MIN, self._mask.shape[1] // 4):
            layers = [(layer.keys[..., first:, :], layer.values[..., first:, :]) for layer in self._cache.layers]
            self._cache = self._rebuilt(layers, self._mask.shape[1] - first)
            self._mask = self._mask[:, first:]

    def _merge(self, rows: list[_Row], cache, mask: torch.Tensor) -> None:
        """Append admitted rows (their cache and mask) to the running batch, both left-padded to one length."""
        if not self.rows:
            self.rows, self._cache, self._mask = rows, cache, mask
            self.peak_rows = max(self.peak_rows, len(rows))
            return
        width = max(self._mask.shape[1], mask.shape[1])
        pad = lambda t, dim: F.pad(t, (0, 0, width - t.shape[dim], 0) if dim == -2 else (width - t.shape[dim], 0))
        layers = [(torch.cat([pad(a.keys, -2), pad(b.keys, -2)]), torch.cat([pad(a.values, -2), pad(b.values, -2)]))
                  for a, b in zip(self._cache.layers, cache.layers)]
        self.rows = self.rows + rows
        self.peak_rows = max(self.peak_rows, len(self.rows))
        self._cache = self._rebuilt(layers, width)
        self._mask = torch.cat([pad(self._mask, -1), pad(mask, -1)])

    def _rebuilt(self, layers: list[tuple[torch.Tensor, torch.Tensor]], width: int):
        """A fresh cache holding these per-layer keys and values, with room for the longest row still to come."""
        room = max(r.request.params.max_new_tokens - len(r.tokens) for r in self.rows) if self.rows else 0
        cache = growing_cache(capacity=width + room + 1)
        for i, (k, v) in enumerate(layers):
            cache.update(k, v, i)
        return cache

    def _fail(self, admitted: list[Pending], error: BaseException) -> None:
        """Every request with rows in the failed step (or being admitted) gets the error; the batch is emptied."""
        failed = {id(r): r for r in admitted}
        failed.update({id(row.request): row.request for row in self.rows})
        self.rows, self._cache, self._mask = [], None, None
        for request in failed.values():
            request.error = error
            request.done.set()
