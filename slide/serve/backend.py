"""The server's side of the engine: requests from the event loop become rows of the continuous-batching engine,
and each decoded token comes back to the request's stream as it is sampled.

    backend = Backend(model, tok, name="my-model")
    job = backend.submit(prompts, params, limits, stops)          # on the event loop
    async for rows, tokens in job.steps(): ...                    # tokens as decoded (rows: the job's own)
    completions = job.result                                      # [Completion] per row, when steps() ends
    job.cancel()                                                  # the client went away: its rows stop next step

Every request runs its engine call on its own thread, blocked until its rows are done, while ContinuousEngine's
scheduler thread decodes every running row together and admits a new request's rows at the next decode step
(slide/engine/continuous.py), each with its own temperature, top_p and seed. The engine's on_step callback runs on
that scheduler thread: it counts each row's tokens against its own max_tokens, stops rows whose client left or
whose text hit a stop string, and hands the tokens to the event loop.
"""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

from slide.device import generator as seeded
from slide.engine.continuous import ContinuousEngine
from slide.engine.inprocess import Completion, InProcessEngine, SamplingParams
from slide.model.chat import chat_format
from slide.model.tokenizer import stop_token_ids


class Job:
    """One request's rows in the engine (one per choice), seen from the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, limits: list[int]):
        self.loop = loop
        self.limits = limits  # max_tokens per row
        self.counts = [0] * len(limits)
        self.halt: dict[int, str] = {}  # row -> why it stops ("length", "stop", "abort"), set by either side
        self.cancelled = False
        self.result: list[Completion] | None = None
        self._queue: asyncio.Queue = asyncio.Queue()

    def on_step(self, rows: list[int], tokens: list[int]) -> list[int]:
        """The engine's callback (its scheduler thread): count, post the tokens, name the rows to stop."""
        for r in rows:
            self.counts[r] += 1
            if self.counts[r] >= self.limits[r]:
                self.halt.setdefault(r, "length")
        self._post(("step", rows, tokens))
        if self.cancelled:
            return rows
        return [r for r in rows if r in self.halt]

    def stop_row(self, row: int, why: str) -> None:
        """Stop a row at the next step (event loop side: its text hit a stop string)."""
        self.halt.setdefault(row, why)

    def cancel(self) -> None:
        self.cancelled = True

    def _post(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: the server is shutting down
            self.cancelled = True

    def finish(self, result: list[Completion] | None, error: BaseException | None) -> None:
        self._post(("end", result, error))

    async def steps(self):
        """(rows, tokens) per decode step until the engine call ends; then `result` holds the completions."""
        while True:
            item = await self._queue.get()
            if item[0] == "step":
                yield item[1], item[2]
                continue
            _, result, error = item
            if error is not None:
                raise error
            self.result = result
            return

    def finish_reason(self, row: int, completion: Completion) -> str:
        if completion.finish_reason == "abort":
            return "stop" if self.halt.get(row) == "stop" else "length"
        return completion.finish_reason


class Backend:
    """A model, its tokenizer and chat format, and the continuous-batching engine that serves every request."""

    def __init__(self, model, tok, name: str, max_model_len: int | None = None, max_concurrency: int = 256):
        self.tok, self.name = tok, name
        self.fmt = chat_format(tok)
        self.stop_ids = tuple(stop_token_ids(tok))
        self.max_model_len = max_model_len or getattr(model.config, "max_position_embeddings", None) or 2048
        self.engine = ContinuousEngine(InProcessEngine(model, pad_token_id=tok.pad_token_id or 0,
                                                       max_batch=max_concurrency))
        self.pool = ThreadPoolExecutor(max_workers=max_concurrency, thread_name_prefix="slide-serve")
        self.jobs: set[Job] = set()
        self.lock = threading.Lock()
        self.served = self.aborted = 0  # requests finished; of them, stopped because their client left

    def params(self, temperature: float, top_p: float, max_tokens: int, min_tokens: int = 0) -> SamplingParams:
        return SamplingParams(temperature=temperature, top_p=top_p, max_new_tokens=max_tokens,
                              min_new_tokens=min_tokens, stop_token_ids=self.stop_ids)

    def submit(self, prompts: list[list[int]], params: SamplingParams, limits: list[int],
               seed: int | None = None) -> Job:
        """Start one engine call (n = 1 per row) for `prompts` on a pool thread; returns at once."""
        job = Job(asyncio.get_running_loop(), limits)
        generator = None if seed is None else seeded(self.engine.model.device, seed)
        with self.lock:
            self.jobs.add(job)
        self.pool.submit(self._run, job, prompts, params, generator)
        return job

    def _run(self, job: Job, prompts, params, generator) -> None:
        result, error = None, None
        try:
            result = [row[0] for row in self.engine.generate(prompts, params, 1, generator, on_step=job.on_step)]
        except Exception as e:  # noqa: BLE001 - an engine failure is this request's 500, never the server's end
            error = e
        with self.lock:
            self.jobs.discard(job)
            self.served += 1
            self.aborted += job.cancelled
        job.finish(result, error)

    def active(self) -> int:
        """Requests whose engine call has not returned."""
        with self.lock:
            return len(self.jobs)

    def stop_all(self) -> None:
        """Stop every row in flight: each engine call returns within a decode step."""
        with self.lock:
            for job in self.jobs:
                job.cancel()

    def shutdown(self) -> None:
        self.stop_all()
        self.pool.shutdown(wait=True)
        self.engine.close()
