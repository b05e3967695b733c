"""A user's own checkpoint (tests/own_checkpoint.py: BPE tokenizer, ChatML template, qwen2) through SLIDE: prompts,
stop tokens and SFT masks from the checkpoint, SFT then RL that learns, eval, and one-line errors for a checkpoint
without a tokenizer, a tokenizer larger than the embeddings, or agentic tasks on a template without them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from own_checkpoint import STYLES, build

from slide.config import RLConfig, SFTConfig, dump_config, load_config
from slide.model.chat import chat_format
from slide.model.tokenizer import chat_prompt, glm_chat, stop_token_ids, tokenizer_for
from slide.rl import sync
from slide.rl.rollout import encode_prompt
from slide.rundir import RunDir
from slide.agent.envs.calculator import TOOLS
from slide.tasks import Arithmetic

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return build(tmp_path_factory.mktemp("own") / "qwen2-chatml")


# what the model writes after the generation prompt, per style: (thinking, reasoning, answer) -> text
WRITES = {
    "chatml": lambda th, r, a: (f"<think>\n{r}\n</think>\n\n" if th else "") + a + "<|im_end|>",
    "llama3": lambda th, r, a: a + "<|eot_id|>",
    "glm": lambda th, r, a: (f"<think>{r}</think>\n" if th else "") + a + "<|endoftext|>",  # eos appended
}


@pytest.mark.parametrize("style", sorted(STYLES))
def test_prompts_stops_and_masks_come_from_the_checkpoint(style, tmp_path):
    folder = build(tmp_path / style, style=style)
    tok = tokenizer_for(str(folder))
    assert not glm_chat(tok)
    assert stop_token_ids(tok) == tok.convert_tokens_to_ids(STYLES[style][2])  # generation_config.json's eos ids
    problem = Arithmetic().generate(__import__("random").Random(0), 2)
    messages = [{"role": "user", "content": problem.prompt}]
    writes = WRITES[style]
    for thinking in (True, False):
        # the template's own rendering and tokenization, token for token
        assert encode_prompt(tok, problem, thinking) == tok.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False, enable_thinking=thinking)
        ids, mask = chat_format(tok).example(messages, problem.reasoning, problem.answer, thinking)
        full = tok.apply_chat_template(messages + [{"role": "assistant", "content": problem.answer,
                                                   "reasoning_content": problem.reasoning if thinking else ""}],
                                       tokenize=False, enable_thinking=thinking)
        assert tok.decode(ids).startswith(full.rstrip("\n"))
        prompt = chat_prompt(tok, messages, thinking=thinking)
        trained = tok.decode([i for i, m in zip(ids, mask) if m])
        assert trained == writes(thinking, problem.reasoning, problem.answer), trained
        assert tok.decode(ids[:mask.index(1)]) == prompt
        assert mask == [0] * mask.index(1) + [1] * sum(mask)  # nothing after the stop token


@pytest.mark.parametrize("style", sorted(STYLES))
def test_sft_rl_and_eval_run_on_every_style(style, tmp_path):
    """A few steps of each command on each style and architecture (dense qwen2 and llama, MoE glm4_moe)."""
    from slide import sft
    folder = build(tmp_path / style, style=style)
    cfg = load_config(SFTConfig, None, ["data=arithmetic:1", "steps=5", "batch_tokens=1024", "seq_len=128",
                                        "eval_prompts=4", "examples=50", f"model.init={folder}",
                                        f"out_dir={tmp_path}", "name=sft"])
    sft.run(cfg, RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False))
    cfg = load_config(RLConfig, None, [f"model.init={tmp_path / 'sft' / 'final'}", "data.train=arithmetic:1",
                                       "steps=2", "eval_every=0", "rollout.prompts_per_step=2", "rollout.n=4",
                                       "rollout.max_new_tokens=24", "data.eval_prompts=4", f"out_dir={tmp_path}",
                                       "name=rl"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    sync.run(cfg, run)
    saved = run.path / "checkpoints" / "step_000002" / "model"
    assert same_tokenizer(saved, folder)
    last = json.loads((run.path / "metrics.jsonl").read_text().splitlines()[-1])  # the last step's eval, chance
    scored = json.loads((run.path / "eval.jsonl").read_text().splitlines()[-1])["summary"]  # included, as logged
    assert last["eval_pass@1"] == scored["pass@1"] and last["eval_chance_pass@1"] == scored["chance_pass@1"]
    r = cli("eval", "--model", str(saved), "--data", "arithmetic:1", "--prompts", "4", "--out", str(tmp_path / "e.json"),
            "--chance")
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads((tmp_path / "e.json").read_text())["summary"]
    assert {"chance_pass@1", "above_chance", "above_chance_se", "lucky"} <= set(summary) and "chance (" in r.stdout


def test_tool_use_sft_and_rl_on_a_hermes_checkpoint(ckpt, tmp_path):
    """Multi-turn tool use on the ChatML/Hermes checkpoint: SFT on calculator conversations, then agentic RL
    episodes, both rendered by its own template (token-level correctness: tests/test_chat_format.py)."""
    from slide import sft
    from slide.model.chat import chat_format
    cfg = load_config(SFTConfig, None, ["data=calculator:1", "steps=2", "batch_tokens=2048", "seq_len=1024",
                                        "eval_prompts=2", "examples=8", f"model.init={ckpt}", f"out_dir={tmp_path}",
                                        "name=sft"])
    sft.run(cfg, RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False))
    cfg = load_config(RLConfig, None, [f"model.init={tmp_path / 'sft' / 'final'}", "data.train=calculator:1",
                                       "steps=1", "eval_every=0", "rollout.prompts_per_step=2", "rollout.n=2",
                                       "rollout.max_new_tokens=16", "agent.max_turns=2", "agent.max_tokens=48",
                                       "data.eval_prompts=2", "algo.dynamic_sampling=false", f"out_dir={tmp_path}",
                                       "name=rl"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    sync.run(cfg, run)
    traj = [json.loads(line) for line in (run.path / "trajectories.jsonl").read_text().splitlines()]
    assert len(traj) == 4 and {t["status"] for t in traj} <= {"completed", "failed", "truncated"}
    assert all(t["messages"][0] == {"role": "user", "content": t["prompt"]} and t["turns"] >= 1 for t in traj)
    fmt = chat_format(tokenizer_for(str(tmp_path / "sft" / "final")))
    assert fmt.tools.name == "hermes" and "<tools>" in fmt.render(traj[0]["messages"][:1], True, TOOLS)


def test_sft_then_rl_on_the_checkpoint_learns(ckpt, tmp_path):
    """SFT teaches the ChatML format with reasoning; RL then learns a dataset whose answer is always 7 (what SFT
    never showed). Calibration (2026-12-02, 2 cores): reward per step 0.09 -> 0.91 in 16 steps, 19 s."""
    from slide import sft
    cfg = load_config(SFTConfig, None, ["data=arithmetic:1", "steps=300", "batch_tokens=4096", "seq_len=128",
                                        "lr=3e-3", "warmup_steps=10", "eval_prompts=20", "examples=2000",
                                        f"model.init={ckpt}", f"out_dir={tmp_path}", "name=sft"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    sft.run(cfg, run)
    final = run.path / "final"
    assert same_tokenizer(final, ckpt)
    data = tmp_path / "seven.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a}+{b}?", "answer": 7}) + "\n"
                            for a in range(10) for b in range(10)))
    cfg = load_config(RLConfig, None, [f"model.init={final}", f"data.train={data}", "steps=16", "eval_every=0",
                                       "rollout.prompts_per_step=8", "rollout.n=8", "rollout.max_new_tokens=40",
                                       "train.lr=3e-4", "data.eval_prompts=20", "seed=1", f"out_dir={tmp_path}",
                                       "name=rl"])
    run = RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)
    result = sync.run(cfg, run)
    m = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    first, last = (sum(r["reward_mean"] for r in rows) / 4 for rows in (m[:4], m[-4:]))
    assert last > first + 0.3, (first, last)
    assert result["summary"]["pass@1"] > 0.5
    traj = [json.loads(line) for line in (run.path / "trajectories.jsonl").read_text().splitlines()]
    assert all(t["response"].endswith(("<|im_end|>", "<|endoftext|>")) for t in traj if t["status"] == "completed")
    saved = run.path / "checkpoints" / "step_000016" / "model"
    assert same_tokenizer(saved, ckpt)
    r = cli("eval", "--model", str(saved), "--data", str(data), "--prompts", "10", "--out", str(tmp_path / "e.json"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "e.json").read_text())["summary"]["pass@1"] > 0.5


def same_tokenizer(a: Path, b: Path) -> bool:
    """Checkpoints save the tokenizer and template they trained with (the files may be re-serialised)."""
    ta, tb = tokenizer_for(str(a)), tokenizer_for(str(b))
    text = "<|im_start|>user\nWhat is 12+7?<|im_end|>"
    return (ta.get_vocab() == tb.get_vocab() and ta.chat_template == tb.chat_template
            and ta(text)["input_ids"] == tb(text)["input_ids"] and stop_token_ids(ta) == stop_token_ids(tb))


def cli(*args):
    return subprocess.run([sys.executable, "-m", "slide.cli", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)


def test_bad_checkpoints_are_one_line_errors(ckpt, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        (bare / f).write_bytes((ckpt / f).read_bytes())
    small = build(tmp_path / "small", embedding_rows=300)  # a 400-token tokenizer over 300 embedding rows
    no_system = with_template(build(tmp_path / "no-system"), lambda t: "{%- if messages[0].role == 'user' -%}"
                              "{{ raise_exception('only system prompts are supported') }}{%- endif -%}" + t)
    no_tool_role = with_template(build(tmp_path / "no-tool"), lambda t: "{%- for m in messages -%}{%- if m.role == "
                                 "'tool' -%}{{ raise_exception('this template has no tool role') }}{%- endif -%}"
                                 "{%- endfor -%}" + t)
    no_calls = with_template(build(tmp_path / "no-calls"), lambda t: "{%- for m in messages -%}{{- m.content -}}"
                             "{%- endfor -%}")
    cases = [
        (["rl", f"model.init={bare}", "data.train=arithmetic:1"], "no tokenizer files"),
        (["rl", f"model.init={small}", "data.train=arithmetic:1"], "the tokenizer has 400 tokens but the model's "
                                                                   "embeddings only 300 rows"),
        (["rl", f"model.init={no_calls}", "data.train=calculator:1"], "writes no tool calls in a format SLIDE knows"),
        (["rl", f"model.init={no_tool_role}", "data.train=calculator:1"], "this template has no tool role"),
        (["sft", f"model.init={no_tool_role}", "data=function_call"], "this template has no tool role"),
        (["sft", f"model.init={bare}", "data=arithmetic:1"], "no tokenizer files"),
        (["rl", f"model.init={no_system}", "data.train=arithmetic:1"], "only system prompts are supported"),
    ]
    for args, message in cases:
        r = cli(*args, f"out_dir={tmp_path / 'runs'}")
        assert r.returncode == 2 and message in r.stderr, (args, r.stderr[-1000:])
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing written


def with_template(folder: Path, edit) -> Path:
    """The checkpoint at `folder` with its chat template replaced by edit(template)."""
    template = folder / "chat_template.jinja"
    if template.is_file():
        template.write_text(edit(template.read_text()))
    else:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config["chat_template"] = edit(config["chat_template"])
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_async_run_and_kill_resume_on_the_checkpoint(ckpt, tmp_path):
    """mode=async (Ray workers load the checkpoint's tokenizer themselves), then a sync run killed with SIGKILL
    after its first checkpoint and resumed: the same metrics and trajectories as the run never stopped."""
    import signal
    import time
    args = [f"model.init={ckpt}", "data.train=arithmetic:1", "rollout.prompts_per_step=2", "rollout.n=4",
            "rollout.max_new_tokens=16", "data.eval_prompts=4", "train.micro_batch=8", "algo.dynamic_sampling=false",
            "threads=1"]
    r = cli("rl", *args, "mode=async", "steps=2", "eval_every=0", f"out_dir={tmp_path}", "name=async")
    assert r.returncode == 0, r.stderr[-3000:]
    traj = [json.loads(line) for line in (tmp_path / "async" / "trajectories.jsonl").read_text().splitlines()]
    assert traj and all(t["response"].endswith(("<|im_end|>", "<|endoftext|>")) or t["status"] == "truncated"
                        for t in traj)

    steps = [*args, "steps=6", "save_every=2", "eval_every=3"]
    r = cli("rl", *steps, f"out_dir={tmp_path}", "name=straight")
    assert r.returncode == 0, r.stderr[-3000:]
    p = subprocess.Popen([sys.executable, "-m", "slide.cli", "rl", *steps, f"out_dir={tmp_path}", "name=killed"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    ckpts, deadline = tmp_path / "killed" / "checkpoints", time.time() + 240
    while time.time() < deadline and not any(ckpts.glob("step_*/state.pt")):
        time.sleep(0.2)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert len((tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()) < 6, "finished before the kill"
    r = cli("rl", "--resume", str(tmp_path / "killed"))
    assert r.returncode == 0, r.stderr[-3000:]

    def rows(name, file):
        out = [json.loads(line) for line in (tmp_path / name / file).read_text().splitlines()]
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in out]

    for file in ("metrics.jsonl", "trajectories.jsonl", "eval.jsonl"):
        assert rows("killed", file) == rows("straight", file), file
