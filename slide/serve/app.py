"""The OpenAI-compatible HTTP API over a Backend: /v1/chat/completions, /v1/completions, /v1/models, /health.

    app = build_app(Backend(model, tok, name="my-model"))      # then uvicorn (slide/serve/server.py)

Chat prompts are rendered by the checkpoint's own chat template (tools included: the template writes them where
the model was trained to read them); the answer is split at <think>...</think> into `reasoning_content` and
`content`, and, when the request offered tools, the checkpoint's tool format (slide/model/tool_formats.py) parses
its calls into OpenAI `tool_calls` (finish_reason "tool_calls"). Thinking is on unless
`chat_template_kwargs: {"enable_thinking": false}` (vLLM's convention). Streams are server-sent events, one
chunk per decoded token (text held back only while it could still be half of a tag or of a stop string), tool
calls in one chunk once the turn has ended. A stream whose client goes away stops its rows at the next decode
step. Every failure of a request is that request's JSON error; the server goes on.
"""
from __future__ import annotations

import asyncio
import json
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from slide.errors import UserError
from slide.serve.backend import Backend, Job
from slide.serve.protocol import ApiError, ChatRequest, CompletionRequest
from slide.serve.text import ChatTurn, RowText

DISCONNECT_POLL_S = 0.25  # how often a non-streamed request checks that its client is still there


def build_app(backend: Backend) -> FastAPI:
    app = FastAPI(title="slide serve", docs_url=None, redoc_url=None)
    app.state.backend = backend
    _error_handlers(app)

    @app.get("/health")
    async def health():
        return {"status": "ok", "active": backend.active()}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": backend.name, "object": "model", "created": int(time.time()),
                                            "owned_by": "slide", "max_model_len": backend.max_model_len}]}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        return await _chat(backend, req, request)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        return await _completions(backend, req, request)

    return app


# ---------------------------------------------------------------------------------------------------- errors
def _json_error(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status)


def _error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_, e: ApiError):
        return _json_error(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(_, e: RequestValidationError):
        err = e.errors()[0]
        if err["type"] == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", err["msg"])
            return _json_error(ApiError(400, f"malformed JSON body: {detail}", None, "invalid_json"))
        param = ".".join(str(x) for x in err["loc"][1:]) or None
        return _json_error(ApiError(400, f"{param or 'body'}: {err['msg']}", param, "invalid_value"))

    @app.exception_handler(HTTPException)
    async def http_error(_, e: HTTPException):
        return _json_error(ApiError(e.status_code, str(e.detail)))

    @app.exception_handler(Exception)
    async def internal(_, e: Exception):
        return _json_error(ApiError(500, f"internal error: {type(e).__name__}: {e}"))


# ---------------------------------------------------------------------------------------------------- shared
def _check(backend: Backend, req) -> None:
    if req.model != backend.name:
        raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {backend.name!r}", "model",
                       "model_not_found")


def _limit(backend: Backend, prompt_len: int, asked: int | None, param: str) -> int:
    """max_tokens for a prompt: what was asked, or the rest of the context; over-long asks are a 400."""
    room = backend.max_model_len - prompt_len
    if room <= 0:
        raise ApiError(400, f"the prompt is {prompt_len} tokens; this model's context is {backend.max_model_len} "
                            f"tokens", param, "context_length_exceeded")
    if asked is not None and asked > room:
        raise ApiError(400, f"max_tokens {asked} + the prompt's {prompt_len} tokens exceed this model's context of "
                            f"{backend.max_model_len} tokens", "max_tokens", "context_length_exceeded")
    return asked or room


def _start(backend: Backend, prompts: list[list[int]], req, asked: int | None, param: str) -> Job:
    """One engine row per choice: each prompt n times."""
    limits = [_limit(backend, len(p), asked, param) for p in prompts]
    rows = [p for p in prompts for _ in range(req.n)]
    params = backend.params(req.temperature, req.top_p, max(limits), req.min_tokens)
    return backend.submit(rows, params, [lim for lim in limits for _ in range(req.n)], req.seed)


async def _decode(job: Job, rows: list[RowText]):
    """Feed each step's tokens to their rows (a stop string stops its row); yields the rows that moved."""
    async for moved, tokens in job.steps():
        for r, t in zip(moved, tokens):
            if rows[r].add(t):
                job.stop_row(r, "stop")
        yield moved


async def _until_done(job: Job, rows: list[RowText], request: Request) -> None:
    """Decode a non-streamed job to its end; a client that leaves meanwhile cancels it."""
    async def watch():
        while True:
            await asyncio.sleep(DISCONNECT_POLL_S)
            if await request.is_disconnected():
                job.cancel()
                return
    watcher = asyncio.create_task(watch())
    try:
        async for _ in _decode(job, rows):
            pass
    except Exception as e:  # noqa: BLE001 - the engine's failure is this request's error
        raise ApiError(500, f"generation failed: {type(e).__name__}: {e}") from None
    finally:
        watcher.cancel()
        job.cancel()


def _usage(job: Job, prompts: list[list[int]], n: int) -> dict:
    prompt = sum(len(p) for p in prompts) * n
    done = sum(len(c.tokens) for c in job.result)
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)}\n\n"


async def _guarded(events, job: Job):
    """A stream's events; an engine failure ends it with an error event, a client that leaves cancels the job."""
    try:
        async for event in events:
            yield event
    except Exception as e:  # noqa: BLE001 - the stream's failure is its own, the server goes on
        yield _sse(ApiError(500, f"generation failed: {type(e).__name__}: {e}").body())
    finally:
        job.cancel()


# ---------------------------------------------------------------------------------------------------- chat
def _chat_prompt(backend: Backend, req: ChatRequest) -> list[int]:
    tools = req.tool_list()
    try:
        if tools:
            backend.fmt.needs_tools("tools")
        return backend.fmt.prompt_ids(req.messages, req.thinking(), tools)
    except UserError as e:
        raise ApiError(400, str(e), "tools" if tools and "tool" in str(e) else "messages") from None
    except (KeyError, TypeError, AttributeError, ValueError) as e:  # a message of the wrong shape
        raise ApiError(400, f"messages: cannot render them ({type(e).__name__}: {e})", "messages") from None


async def _chat(backend: Backend, req: ChatRequest, request: Request):
    _check(backend, req)
    if req.stream and req.logprobs:
        raise ApiError(400, "logprobs are returned for non-streamed requests only", "logprobs")
    prompt = _chat_prompt(backend, req)
    job = _start(backend, [prompt], req, req.limit(), "messages")
    rows = [RowText(backend.tok, backend.fmt, req.stop_strings()) for _ in range(req.n)]
    turns = [ChatTurn(backend.fmt, bool(req.tool_list())) for _ in range(req.n)]
    head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": backend.name}
    if req.stream:
        return StreamingResponse(_guarded(_chat_stream(job, rows, turns, head, req, prompt), job),
                                 media_type="text/event-stream")
    await _until_done(job, rows, request)
    choices = []
    for i, (row, turn) in enumerate(zip(rows, turns)):
        _, _, calls = turn.final(row.text())
        reasoning, content = turn.full()
        message = {"role": "assistant", "content": content if content or not calls else None,
                   "reasoning_content": reasoning or None}
        if calls:
            message["tool_calls"] = calls
        choice = {"index": i, "message": message, "logprobs": None,
                  "finish_reason": "tool_calls" if calls else job.finish_reason(i, job.result[i])}
        if req.logprobs:
            choice["logprobs"] = {"content": _token_logprobs(backend, job.result[i])}
        choices.append(choice)
    return {**head, "object": "chat.completion", "choices": choices, "usage": _usage(job, [prompt], req.n)}


def _token_logprobs(backend: Backend, completion) -> list[dict]:
    out = []
    for t, lp in zip(completion.tokens, completion.logprobs):
        text = backend.tok.decode([t], skip_special_tokens=False)
        out.append({"token": text, "logprob": lp, "bytes": list(text.encode()), "top_logprobs": []})
    return out


async def _chat_stream(job: Job, rows: list[RowText], turns: list[ChatTurn], head: dict, req: ChatRequest,
                       prompt: list[int]):
    def chunk(choices: list[dict], **extra) -> str:
        return _sse({**head, "object": "chat.completion.chunk", "choices": choices, **extra})

    def delta(i: int, reasoning: str, content: str) -> dict:
        d = {"reasoning_content": reasoning} if reasoning else {}
        return {"index": i, "delta": d | ({"content": content} if content else {}), "finish_reason": None}

    yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
                 for i in range(req.n)])
    async for moved in _decode(job, rows):
        out = [delta(i, *turns[i].delta(rows[i].safe(turns[i].tags))) for i in moved]
        out = [c for c in out if c["delta"]]
        if out:
            yield chunk(out)
    for i, (row, turn) in enumerate(zip(rows, turns)):
        reasoning, content, calls = turn.final(row.text())
        last = delta(i, reasoning, content)
        if calls:
            last["delta"]["tool_calls"] = [{"index": k, **c} for k, c in enumerate(calls)]
        if last["delta"]:
            yield chunk([last])
        yield chunk([{"index": i, "delta": {},
                      "finish_reason": "tool_calls" if calls else job.finish_reason(i, job.result[i])}])
    if req.stream_options and req.stream_options.include_usage:
        yield chunk([], usage=_usage(job, [prompt], req.n))
    yield _sse("[DONE]")


# ---------------------------------------------------------------------------------------------------- completions
def _completion_prompts(backend: Backend, req: CompletionRequest) -> list[list[int]]:
    prompts = [backend.tok.encode(p) if isinstance(p, str) else p for p in req.prompt_list()]
    if not prompts or any(not p for p in prompts):
        raise ApiError(400, "prompt: empty", "prompt")
    vocab = len(backend.tok)
    if any(not 0 <= t < vocab for p in prompts for t in p):
        raise ApiError(400, f"prompt: token ids must be in [0, {vocab})", "prompt")
    return prompts


async def _completions(backend: Backend, req: CompletionRequest, request: Request):
    _check(backend, req)
    prompts = _completion_prompts(backend, req)
    job = _start(backend, prompts, req, req.limit(), "prompt")
    rows = [RowText(backend.tok, backend.fmt, req.stop_strings()) for _ in range(len(prompts) * req.n)]
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": backend.name}
    if req.stream:
        return StreamingResponse(_guarded(_completion_stream(job, rows, head, req, prompts), job),
                                 media_type="text/event-stream")
    await _until_done(job, rows, request)
    choices = [{"index": i, "text": row.text(), "logprobs": None, "finish_reason": job.finish_reason(i, c)}
               for i, (row, c) in enumerate(zip(rows, job.result))]
    return {**head, "choices": choices, "usage": _usage(job, prompts, req.n)}


async def _completion_stream(job: Job, rows: list[RowText], head: dict, req: CompletionRequest,
                             prompts: list[list[int]]):
    sent = [""] * len(rows)

    def piece(i: int, text: str, finish: str | None = None) -> dict:
        new = text[len(sent[i]):]
        sent[i] = text
        return {"index": i, "text": new, "logprobs": None, "finish_reason": finish}

    async for moved in _decode(job, rows):
        out = [piece(i, rows[i].safe()) for i in moved]
        out = [c for c in out if c["text"]]
        if out:
            yield _sse({**head, "choices": out})
    yield _sse({**head, "choices": [piece(i, row.text(), job.finish_reason(i, job.result[i]))
                                    for i, row in enumerate(rows)]})
    if req.stream_options and req.stream_options.include_usage:
        yield _sse({**head, "choices": [], "usage": _usage(job, prompts, req.n)})
    yield _sse("[DONE]")
