"""One strange answer never stalls a run: the adversarial corpus (tests/adversarial.py) through the sync and
async drivers and `slide eval`; the watchdog's dump, message, checkpoint and exit; resume after a stall."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from adversarial import CORPUS

from slide.config import RLConfig, dump_config, load_config
from slide.engine.inprocess import Completion
from slide.model.chat import chat_format
from slide.model.tokenizer import load_tokenizer
from slide.rl import parts, sync
from slide.rundir import RunDir

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["rollout.prompts_per_step=2", "rollout.n=4", "rollout.max_new_tokens=24", "data.eval_prompts=4",
         "eval_every=0", "train.micro_batch=8", "algo.dynamic_sampling=false", "rollout.reward_timeout_s=1"]


def rows(path: Path, answers: list[str]) -> str:
    path.write_text("".join(json.dumps({"prompt": f"What is {i}+{i}?", "answer": a}) + "\n"
                            for i, a in enumerate(answers)))
    return str(path)


# what a policy can write: token ids decode to text without lone surrogates
WRITABLE = [text for text, _ in CORPUS if not any("\ud800" <= c <= "\udfff" for c in text)]


class CorpusEngine:
    """The real in-process engine (weights, versions, loads) whose completions are the corpus' answers, one
    row after another, each inside a normal GLM response."""

    def __init__(self, engine, tok):
        self.engine, self.tok, self.next = engine, tok, 0

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate(self, prompts, params, n=1, generator=None):
        out = []
        for _ in prompts:
            group = []
            for _ in range(n):
                text = WRITABLE[self.next % len(WRITABLE)]
                self.next += 1
                ids = self.tok.encode(f"<think>sure</think>{text[:1100]}<|endoftext|>", add_special_tokens=False)
                group.append(Completion(ids, [-1.0] * len(ids), "stop", self.engine.version))
            out.append(group)
        return out


def test_sync_run_on_the_corpus_finishes_and_counts_rejections(tmp_path, monkeypatch):
    make = parts.make_engine  # what the sync driver's engine is made by (Parts.engine)
    monkeypatch.setattr(parts, "make_engine", lambda *a, **k: CorpusEngine(make(*a, **k), tok))
    tok = load_tokenizer()
    data = rows(tmp_path / "rows.jsonl", ["3889", "\\frac{1}{2}", "12"])
    cfg = load_config(RLConfig, None, [f"out_dir={tmp_path}", "steps=2", f"data.train={data}", *SMALL])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    t0 = time.perf_counter()
    sync.run(cfg, run)
    metrics = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and time.perf_counter() - t0 < 120
    seen = {k: sum(m.get(k, 0) for m in metrics) for m in metrics for k in m if k.startswith("reward_rejected/")}
    assert seen.keys() >= {"reward_rejected/huge_power", "reward_rejected/nesting", "reward_rejected/too_long"}
    assert all(m["reward_mean"] == 0.0 for m in metrics)


def test_sync_run_with_a_reward_that_holds_the_gil_counts_timeouts(sft_model, tmp_path):
    data = rows(tmp_path / "rows.jsonl", ["2", "4", "6", "8"])
    cfg = load_config(RLConfig, None, [f"out_dir={tmp_path}", "steps=2", f"data.train={data}",
                                       "data.reward=tests.adversarial:score", f"model.init={sft_model[0]}", *SMALL])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    sync.run(cfg, run)
    metrics = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    trajectories = [json.loads(line) for line in (run.path / "trajectories.jsonl").read_text().splitlines()]
    from adversarial import pick
    cut = chat_format(load_tokenizer()).cut  # rewards score the response without its stop token
    hangs = sum(pick(cut(t["response"])) is None for t in trajectories)
    assert hangs > 0 and sum(m["reward_timeouts"] for m in metrics) == hangs


def cli(*args, cwd=ROOT, timeout=300):
    return subprocess.run([sys.executable, "-m", "slide.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_slide_eval_on_references_that_expand_enormously(sft_model, tmp_path):
    """The issue's SFT hang: held-out references like 9^9^9^9 reach sympy in every comparison."""
    data = rows(tmp_path / "refs.jsonl", [t for t, why in CORPUS if why][:6])
    r = cli("eval", "--model", str(sft_model[0]), "--data", data, "--prompts", "6", "--out", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["summary"]["pass@1"] == 0.0 and result["reward_timeouts"] == 0
    assert sum(v for k, v in result.items() if k.startswith("reward_rejected/")) >= 6
