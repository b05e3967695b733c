"""`slide serve` driven by the official openai client: plain, streamed, tool-call and thinking answers, 32 concurrent
clients batched by one server, bad requests, a client leaving mid-stream, and the command's bad input."""
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from types import SimpleNamespace

import openai
import pytest
import torch
import uvicorn

from slide.engine.inprocess import InProcessEngine, SamplingParams
from slide.model.chat import chat_format
from slide.model.load import load_with_tokenizer
from slide.model.tokenizer import assistant_text
from slide.model.tool_formats import TOOL_FORMATS
from slide.serve.app import build_app
from slide.serve.backend import Backend
from slide.serve.server import Server, listen
from slide.serve.text import ChatTurn, held_back
from slide.tasks import Arithmetic

TOOL = {"type": "function", "function": {"name": "calculate", "description": "Evaluate an arithmetic expression.",
                                         "parameters": {"type": "object",
                                                        "properties": {"expression": {"type": "string"}}}}}


@contextmanager
def running(backend: Backend):
    """The server on a free port in a thread; yields an openai client for it."""
    sock = listen("127.0.0.1", 0)
    server = Server(uvicorn.Config(build_app(backend), log_level="warning"), backend)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert time.time() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.02)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    try:
        yield openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=120), url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        backend.shutdown()
        sock.close()


class Scripted(torch.nn.Module):
    """A stand-in causal LM that writes `script` (token ids) whatever the prompt, then repeats its last token;
    records each prompt it is given. `delay_s` per decode step makes a long answer take time."""

    def __init__(self, script: list[int], vocab: int, delay_s: float = 0.0):
        super().__init__()
        self.script, self.vocab, self.delay_s = script, vocab, delay_s
        self.config = SimpleNamespace(max_position_embeddings=2048)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # a device to run on
        self.prompts: list[list[int]] = []
        self.step = 0

    @property
    def device(self):
        return self.anchor.device

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None, use_cache=True,
                logits_to_keep=1):
        if input_ids.shape[1] > 1:  # the prefill of a new call (one row at a time in these tests)
            self.prompts.append(input_ids[0].tolist())
            self.step = 0
        else:
            self.step += 1
            time.sleep(self.delay_s)
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -1e4)
        logits[:, :, self.script[min(self.step, len(self.script) - 1)]] = 0.0
        return SimpleNamespace(logits=logits)


def scripted_backend(tok, text: str, delay_s: float = 0.0) -> Backend:
    ids = tok.encode(text, add_special_tokens=False)
    return Backend(Scripted(ids, len(tok), delay_s), tok, "scripted")


def _ask(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


# ------------------------------------------------------------------------------------------- text: no server
def test_held_back_and_streamed_turn_equals_whole():
    assert held_back("abc<thi", ["<think>"]) == 4 and held_back("abc", ["<think>"]) == 0
    assert held_back("x<", ["</think>", "<tool_call>"]) == 1
    fmt = SimpleNamespace(tools=TOOL_FORMATS["hermes"])
    text = ('<think>\nfind the sum\n</think>\n\nLet me add.\n<tool_call>\n{"name": "calculate", '
            '"arguments": {"expression": "2+3"}}\n</tool_call>')
    turn = ChatTurn(fmt, tools=True)
    streamed = ["", ""]
    for end in range(1, len(text) + 1):  # one character at a time, as a stream would see it
        part = text[:end]
        r, c = turn.delta(part[:len(part) - held_back(part, turn.tags)])
        streamed = [streamed[0] + r, streamed[1] + c]
    r, c, calls = turn.final(text)
    streamed = [streamed[0] + r, streamed[1] + c]
    assert streamed == ["find the sum", "Let me add."]
    assert [c["function"] for c in calls] == [{"name": "calculate", "arguments": '{"expression": "2+3"}'}]
    plain = ChatTurn(fmt, tools=False)  # no tools offered: the call is content, as written
    assert plain.final(text)[1].endswith("</tool_call>")


# ------------------------------------------------------------------------------------------- tools and thinking
def test_tool_call_and_reasoning_plain_and_streamed(tok):
    text = assistant_text("add them", "", end="<|observation|>",
                          tool_calls=[{"name": "calculate", "arguments": {"expression": "2+3"}}])
    backend = scripted_backend(tok, text)
    with running(backend) as (client, _):
        r = client.chat.completions.create(model="scripted", messages=_ask("2+3?"), tools=[TOOL])
        choice = r.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.reasoning_content == "add them"
        [call] = choice.message.tool_calls
        assert call.function.name == "calculate" and json.loads(call.function.arguments) == {"expression": "2+3"}
        prompt = tok.decode(backend.engine.model.prompts[-1], skip_special_tokens=False)
        assert '"name": "calculate"' in prompt and prompt.endswith("<|assistant|>\n")  # the template wrote the tools

        chunks = list(client.chat.completions.create(model="scripted", messages=_ask("2+3?"), tools=[TOOL],
                                                     stream=True))
        reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks)
        calls = [t for c in chunks for t in (c.choices[0].delta.tool_calls or [])]
        assert reasoning == "add them" and len(chunks) > 5  # token by token
        assert [(t.function.name, json.loads(t.function.arguments)) for t in calls] == \
            [("calculate", {"expression": "2+3"})]
        assert chunks[-1].choices[0].finish_reason == "tool_calls"

        # the answer to a follow-up turn renders the call and its result through the template
        follow = _ask("2+3?") + [{"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                                 {"role": "tool", "tool_call_id": call.id, "content": "5"}]
        client.chat.completions.create(model="scripted", messages=follow, tools=[TOOL])
        prompt = tok.decode(backend.engine.model.prompts[-1], skip_special_tokens=False)
        assert "<tool_response>5</tool_response>" in prompt

        r = client.chat.completions.create(model="scripted", messages=_ask("2+3?"))  # no tools offered
        assert r.choices[0].message.tool_calls is None and "<tool_call>calculate" in r.choices[0].message.content


# ------------------------------------------------------------------------------------------- the trained model
@pytest.fixture(scope="module")
def trained(sft_model):
    model, tok = load_with_tokenizer(str(sft_model[0]), "model")
    return model, tok


def _prompts(n: int) -> list[str]:
    import random
    rng = random.Random(7)
    return [Arithmetic().generate(rng, 1).prompt for _ in range(n)]


def test_plain_stream_and_32_concurrent_clients_match_the_engine(trained):
    model, tok = trained
    fmt = chat_format(tok)
    prompts = _prompts(32)
    params = SamplingParams(temperature=0.0, max_new_tokens=48, stop_token_ids=tuple(fmt.stop_ids))
    ids = [fmt.prompt_ids(_ask(p), thinking=True) for p in prompts]
    own = [fmt.parse(tok.decode(g[0].tokens, skip_special_tokens=False))
           for g in InProcessEngine(model, tok.pad_token_id).generate(ids, params)]
    backend = Backend(model, tok, "sft")
    with running(backend) as (client, _):
        def ask(p):
            r = client.chat.completions.create(model="sft", messages=_ask(p), temperature=0, max_tokens=48)
            return r.choices[0].message
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(ask, prompts))
        assert [(a.reasoning_content or "", a.content) for a in answers] == \
            [(o["reasoning"], o["content"]) for o in own]
        assert any(o["reasoning"] for o in own)  # the cold start thinks: reasoning_content is exercised
        assert backend.engine.requests == 32 and backend.engine.peak_rows > 1  # decoded in shared steps

        stream = client.chat.completions.create(model="sft", messages=_ask(prompts[0]), temperature=0,
                                                max_tokens=48, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = ["".join(getattr(c.choices[0].delta, k, None) or "" for c in chunks if c.choices)
                for k in ("reasoning_content", "content")]
        assert text == [own[0]["reasoning"], own[0]["content"]]
        assert chunks[-1].usage.prompt_tokens == len(ids[0])

        done = client.completions.create(model="sft", prompt=prompts[1], max_tokens=5, temperature=0, n=2)
        assert len(done.choices) == 2 and done.choices[0].text == done.choices[1].text
        assert done.usage.completion_tokens <= 10
        assert [m.id for m in client.models.list().data] == ["sft"]


# ------------------------------------------------------------------------------------------- bad requests
def _post(url: str, body: bytes) -> tuple[int, dict]:
    req = urllib.request.Request(url + "/chat/completions", data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_bad_requests_and_a_client_leaving_mid_stream(tok):
    backend = scripted_backend(tok, "<think>x</think>\nabcdefgh", delay_s=0.01)
    with running(backend) as (client, url):
        status, body = _post(url, b'{"model": "scripted", "messages": [')
        assert status == 400 and body["error"]["code"] == "invalid_json" and set(body["error"]) == \
            {"message", "type", "param", "code"}
        with pytest.raises(openai.NotFoundError) as e:
            client.chat.completions.create(model="nope", messages=_ask("hi"))
        assert e.value.body["code"] == "model_not_found"
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="scripted", messages=_ask("9" * 3000))
        assert e.value.body["code"] == "context_length_exceeded"
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="scripted", messages=_ask("hi"), temperature=5)
        assert e.value.body["param"] == "temperature"
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="scripted", messages=[{"role": "robot", "content": "hi"}])
        assert e.value.body["param"] == "messages"

        stream = client.chat.completions.create(model="scripted", messages=_ask("hi"), max_tokens=1500, stream=True)
        for i, _ in enumerate(stream):
            if i == 3:
                break
        stream.close()  # the client goes away ~1,500 x 10 ms before the answer would end
        deadline = time.time() + 10
        while backend.active() and time.time() < deadline:
            time.sleep(0.05)
        assert backend.active() == 0 and backend.aborted == 1

        r = client.chat.completions.create(model="scripted", messages=_ask("hi"), max_tokens=12, stop=["d"])
        assert (r.choices[0].message.reasoning_content, r.choices[0].message.content) == ("x", "abc")
        assert r.choices[0].finish_reason == "stop"


# ------------------------------------------------------------------------------------------- the command
def test_missing_checkpoint_and_busy_port(tmp_path):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "slide.cli", "serve", *args], capture_output=True, text=True,
                              timeout=120)
    r = serve(str(tmp_path / "nothing"))
    assert r.returncode == 2 and r.stderr.strip().startswith("error: checkpoint") and r.stderr.count("\n") == 1
    busy = listen("127.0.0.1", 0)
    try:
        r = serve(str(tmp_path), "--port", str(busy.getsockname()[1]))
    finally:
        busy.close()
    assert r.returncode == 2 and "Address already in use" in r.stderr and r.stderr.count("\n") == 1
