"""End-to-end RL on the test-size model: learning, parity, resume = uninterrupted, HF-loadable output."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from slide.config import RLConfig, dump_config, load_config
from slide.rl import sync
from slide.rundir import RunDir

TINY = ["rollout.prompts_per_step=4", "rollout.n=4", "rollout.max_new_tokens=40", "data.eval_prompts=16",
        "train.micro_batch=8"]


def make_run(tmp_path, *overrides, name="rl"):
    cfg = load_config(RLConfig, None, [f"out_dir={tmp_path}", f"name={name}", *overrides])
    return cfg, RunDir.create(cfg.out_dir, cfg.name, dump_config(cfg), tensorboard=False)


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_reward_rises_on_a_user_jsonl_dataset(sft_model, tmp_path):
    """RL learns what SFT never showed: a user dataset whose answer is always 7 (fixed seed).

    Calibration (2026-11-29, 2 cores): reward per step went 0.11 -> 0.93 in 16 steps at lr 3e-4.
    """
    init, _ = sft_model
    data = tmp_path / "seven.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"What is {a}+{b}?", "answer": 7}) + "\n"
                            for a in range(10) for b in range(10)))
    cfg, run = make_run(tmp_path, f"model.init={init}", f"data.train={data}", "steps=16", "eval_every=0",
                        "rollout.prompts_per_step=8", "rollout.n=8", "rollout.max_new_tokens=40",
                        "train.lr=3e-4", "data.eval_prompts=20", "seed=1")
    result = sync.run(cfg, run)
    m = read(run.path / "metrics.jsonl")
    first = sum(r["reward_mean"] for r in m[:4]) / 4
    last = sum(r["reward_mean"] for r in m[-4:]) / 4
    assert last > first + 0.3, (first, last)
    assert result["summary"]["pass@1"] > 0.5  # held-out prompts of the same dataset, greedy
    assert {t["family"] for t in read(run.path / "trajectories.jsonl")} == {"seven"}


def test_first_step_is_on_policy_and_parity_is_logged(sft_model, tmp_path):
    init, _ = sft_model
    cfg, run = make_run(tmp_path, f"model.init={init}", "data.train=arithmetic:1", "steps=1", *TINY)
    sync.run(cfg, run)
    row = read(run.path / "metrics.jsonl")[0]
    assert row["ratio_dev_max"] == 0.0  # the trainer's ratio against its own pre-update logprobs, fp32
    assert row["logprob_gap_max"] < 1e-3  # engine (KV cache, left padding) vs trainer (full forward)
    for key in ("step", "reward_mean", "pass_rate", "response_len_mean", "time/rollout_s", "time/train_s",
                "time/sync_s", "logprob_gap_mean"):
        assert key in row
    traj = read(run.path / "trajectories.jsonl")
    assert len(traj) >= 16 and {"prompt", "response", "reward", "version", "status"} <= set(traj[0])


def test_bf16_training_keeps_fp32_master_weights_and_parity(sft_model, tmp_path):
    """train.precision=bf16 (autocast) with a bf16 engine: the first update is still exactly on-policy (ratio 1:
    old = the trainer's own logprobs), the engine-vs-trainer gap is bf16 rounding (fp32: < 1e-3; here about a
    hundredth of a nat on average), and the policy, optimizer and checkpoint stay fp32."""
    init, _ = sft_model
    cfg, run = make_run(tmp_path, f"model.init={init}", "data.train=arithmetic:1", "steps=1", "save_every=1",
                        "train.precision=bf16", "rollout.precision=bf16", *TINY)
    sync.run(cfg, run)
    row = read(run.path / "metrics.jsonl")[0]
    assert row["ratio_dev_max"] == 0.0
    # bf16 rounding: ~0.01 nats on average; a handful of tokens (0.8% over 0.1 nats, at most 1.6 nats with the
    # current test checkpoint) move further. A wrong or stale weight would move most tokens by far more.
    assert 0 < row["logprob_gap_mean"] < 0.05 and row["logprob_gap_frac_over"] < 0.05, row
    assert row["logprob_gap_max"] < 5.0, row
    from transformers import AutoModelForCausalLM
    saved = AutoModelForCausalLM.from_pretrained(run.path / "checkpoints" / "step_000001" / "model")
    assert {p.dtype for p in saved.parameters()} == {torch.float32}
    state = torch.load(run.path / "checkpoints" / "step_000001" / "state.pt", weights_only=False)
    moments = [v for s in state["trainer"]["optimizer"]["state"].values() for v in s.values() if v.dim() > 0]
    assert moments and all(v.dtype == torch.float32 for v in moments)


def test_checkpoint_loads_with_plain_transformers(sft_model, tmp_path):
    init, _ = sft_model
    cfg, run = make_run(tmp_path, f"model.init={init}", "data.train=arithmetic:1", "steps=1", *TINY)
    sync.run(cfg, run)
    ckpt = run.path / "checkpoints" / "step_000001" / "model"
    code = ("import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer;"
            "m = AutoModelForCausalLM.from_pretrained(sys.argv[1]); t = AutoTokenizer.from_pretrained(sys.argv[1]);"
            "ids = t.apply_chat_template([{'role': 'user', 'content': 'What is 2+3?'}], add_generation_prompt=True,"
            " return_dict=False); out = m.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False);"
            "print(type(m).__name__, len(out[0]) > len(ids))")
    r = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True, timeout=120,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Glm4MoeForCausalLM True" in r.stdout


def _metrics_without_time(path):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in read(path)]


def test_resume_after_kill_equals_uninterrupted(sft_model, tmp_path):
    init, _ = sft_model
    args = [f"model.init={init}", "data.train=arithmetic:1", "steps=8", "save_every=2", "eval_every=3", *TINY]
    # both runs in fresh processes: in-process runs after other tests can differ in the last bits (an order
    # dependence seen 2026-12-03 after the engine and serve tests), which is not what this test is about
    cmd = [sys.executable, "-m", "slide.cli", "rl", *args, f"out_dir={tmp_path}", "threads=2"]
    r = subprocess.run([*cmd, "name=straight"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    straight = tmp_path / "straight"
    # the same run again, killed with SIGKILL once its first checkpoint exists, then resumed
    cmd = [*cmd, "name=killed"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = tmp_path / "killed" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not (ckpts.exists() and any(ckpts.glob("step_*/state.pt"))):
        time.sleep(0.2)
    time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    done = len(read(tmp_path / "killed" / "metrics.jsonl"))
    assert done < 8, "the run finished before it was killed; the test proves nothing"
    r = subprocess.run([sys.executable, "-m", "slide.cli", "rl", "--resume", str(tmp_path / "killed")],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _metrics_without_time(tmp_path / "killed" / "metrics.jsonl") == _metrics_without_time(
        straight / "metrics.jsonl")
    a, b = read(tmp_path / "killed" / "trajectories.jsonl"), read(straight / "trajectories.jsonl")
    assert a == b
    assert read(tmp_path / "killed" / "eval.jsonl") == read(straight / "eval.jsonl")


def test_one_update_moves_logprobs_in_the_advantage_direction(tmp_path):
    """A positive-advantage sample becomes more likely and a negative one less likely after one step."""
    from slide.config import AlgoSpec, TrainSpec
    from slide.model.tiny import build_model, tiny_config
    from slide.model.tokenizer import load_tokenizer
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer, collate, response_logprobs
    from slide.tasks.base import Problem

    tok = load_tokenizer()
    model = build_model(tiny_config("test", tok), seed=0)
    trainer = PolicyTrainer(model, TrainSpec(lr=1e-3), AlgoSpec(), temperature=1.0, pad_id=0, router_bias_rate=0.0)
    prob = Problem(prompt="q", answer="1", family="f", level=1)
    good = Sample([1, 2, 4, 18, 30], [40, 41, 42], [1, 1, 1], [0.0] * 3, 0, prob, 0)
    bad = Sample([1, 2, 4, 18, 30], [50, 51], [1, 1], [0.0] * 2, 0, prob, 0)

    def seq_logp(s):
        ids, attn, targets, mask, _, start = collate([s], 0)
        with torch.no_grad():
            return float((response_logprobs(model, ids, attn, targets, start, 1.0) * mask).sum())

    before = seq_logp(good), seq_logp(bad)
    for s in (good, bad):  # make TIS weights 1: behaviour = current policy
        ids, attn, targets, mask, _, start = collate([s], 0)
        with torch.no_grad():
            s.behaviour_logprobs = response_logprobs(model, ids, attn, targets, start, 1.0)[0].tolist()
    good.advantage, bad.advantage = 1.0, -1.0
    stats = trainer.step([good, bad])
    assert stats["ratio_dev_max"] == 0.0 and abs(stats["tis_weight_mean"] - 1.0) < 1e-5
    assert seq_logp(good) > before[0] and seq_logp(bad) < before[1]


def two_update_trainer(algo):
    """A test-size PolicyTrainer with two updates per step (lr 1e-3, no weight decay), a batch of four one-sample
    groups with advantages +1, -1, +1, -1, and seq_logp(sample): its response logprobs under the current weights."""
    from slide.config import TrainSpec
    from slide.model.tiny import build_model, tiny_config
    from slide.model.tokenizer import load_tokenizer
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer, collate, response_logprobs
    from slide.tasks.base import Problem

    model = build_model(tiny_config("test", load_tokenizer()), seed=0)
    trainer = PolicyTrainer(model, TrainSpec(lr=1e-3, updates_per_step=2, weight_decay=0.0), algo, temperature=1.0,
                            pad_id=0, router_bias_rate=0.0)
    prob = Problem(prompt="q", answer="1", family="f", level=1)
    batch = [Sample([1, 2, 4, 18, 30], resp, [1] * len(resp), [0.0] * len(resp), 0, prob, 0)
             for resp in ([40, 41, 42], [50, 51], [43, 44], [52, 53, 54])]
    for s, a in zip(batch, (1.0, -1.0, 1.0, -1.0)):
        s.advantage = a

    def seq_logp(s):
        ids, attn, targets, mask, _, start = collate([s], 0)
        with torch.no_grad():
            return response_logprobs(model, ids, attn, targets, start, 1.0)[0]

    return trainer, batch, seq_logp


def test_mini_batch_updates_clip_against_the_rollout_policy():
    """updates_per_step=2: two optimizer updates on halves of the batch (whole groups); the second half's
    ratio is taken against the logprobs from before the first update (so it is no longer exactly 1), and
    both halves still move in their advantages' direction."""
    from slide.config import AlgoSpec
    trainer, batch, seq_logp = two_update_trainer(AlgoSpec())
    before = [seq_logp(s) for s in batch]
    for s, lp in zip(batch, before):
        s.behaviour_logprobs = lp.tolist()
    stats = trainer.step(batch)
    assert stats["updates"] == 2 and trainer.updates == 2
    assert stats["ratio_dev_max"] > 0  # the second update saw the first one's change
    after = [seq_logp(s) for s in batch]
    for s, b, a in zip(batch, before, after):
        assert (a.sum() > b.sum()) == (s.advantage > 0)


def test_decoupled_drops_tokens_a_stale_engine_found_far_less_likely():
    """algo.importance=decoupled, two updates per step: samples whose recorded (behaviour) logprobs are log(10)
    below the trainer's (proximal/behaviour ratio 10 > decoupled_cap 5) are dropped from the loss, so the model
    does not move; the same batch with fresh behaviour logprobs trains (TIS would have kept the stale ones,
    weighted 2)."""
    from slide.config import AlgoSpec
    trainer, batch, seq_logp = two_update_trainer(AlgoSpec(importance="decoupled"))
    before = [seq_logp(s) for s in batch]
    for s, lp in zip(batch, before):
        s.behaviour_logprobs = (lp - math.log(10)).tolist()  # stale: the engine found each token 10x less likely
    stats = trainer.step(batch)
    assert stats["updates"] == 2 and stats["is_masked_frac"] == 1.0
    assert all(torch.equal(seq_logp(s), b) for s, b in zip(batch, before))
    for s, lp in zip(batch, before):
        s.behaviour_logprobs = lp.tolist()  # fresh
    stats = trainer.step(batch)
    assert stats["is_masked_frac"] == 0.0
    for s, b in zip(batch, before):
        assert (seq_logp(s).sum() > b.sum()) == (s.advantage > 0)


@pytest.mark.parametrize("loss_agg", ["token-mean", "seq-mean-token-mean"])
def test_an_update_built_from_pieces_equals_one_batch(loss_agg):
    """The async driver trains each group as it arrives (begin_update, accumulate per group, finish_update):
    the gradient of that update equals the one of a step on the whole batch, and so do the metrics."""
    from slide.config import AlgoSpec, TrainSpec
    from slide.model.tiny import build_model, tiny_config
    from slide.model.tokenizer import load_tokenizer
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer
    from slide.tasks.base import Problem

    tok = load_tokenizer()
    prob = Problem(prompt="q", answer="1", family="f", level=1)
    batch = [Sample([1, 2, 4, 18, 30][:k], resp, [1] * (len(resp) - 1) + [0], [-1.5] * len(resp), 0, prob, 0)
             for k, resp in ((5, [40, 41, 42]), (4, [50, 51]), (5, [43, 44, 45, 46]), (3, [52, 53, 54]))]
    for s, a in zip(batch, (1.0, -1.0, 0.5, -0.5)):
        s.advantage = a
    trained = []
    for pieces in ([batch], [batch[:1], batch[1:3], batch[3:]]):
        model = build_model(tiny_config("test", tok), seed=0)
        trainer = PolicyTrainer(model, TrainSpec(lr=1e-3, micro_batch=2), AlgoSpec(loss_agg=loss_agg),
                                temperature=1.0, pad_id=0, router_bias_rate=1e-3)
        # (the router balance update counts real tokens only: the split's padding must not move the biases)
        # plain SGD: the new weights are the old minus the (clipped) gradient; Adam's first step would turn
        # float noise in a gradient that is zero in exact arithmetic into a step of lr
        trainer.opt = torch.optim.SGD(model.parameters(), lr=1.0)
        if len(pieces) == 1:
            stats = trainer.step(batch)
        else:
            trainer.begin_update()
            for piece in pieces:
                trainer.accumulate(piece)
            stats = trainer.finish_update()
        trained.append((model.state_dict(), stats))
    (whole, a), (pieces, b) = trained
    for name, tensor in whole.items():
        torch.testing.assert_close(pieces[name], tensor, rtol=1e-5, atol=1e-6)
    assert a["train_tokens"] == b["train_tokens"] == 8.0  # the last token of each response is masked
    for key in ("loss", "grad_norm", "tis_weight_mean", "clipfrac"):
        assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key


def test_gradient_checkpointing_gives_the_same_update_and_expert_counts():
    """train.gradient_checkpointing recomputes each layer in the backward pass: the gradients (so the SGD
    update) equal those of a plain step, and the recomputed forwards are not counted again by the router
    balance (the counts stay one per real token and chosen expert)."""
    from slide.config import AlgoSpec, TrainSpec
    from slide.model.tiny import build_model, tiny_config
    from slide.model.tokenizer import load_tokenizer
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer
    from slide.tasks.base import Problem

    tok = load_tokenizer()
    prob = Problem(prompt="q", answer="1", family="f", level=1)
    batch = [Sample([1, 2, 4, 18, 30][:k], resp, [1] * len(resp), [-1.5] * len(resp), 0, prob, 0)
             for k, resp in ((5, [40, 41, 42]), (4, [50, 51]), (5, [43, 44, 45, 46]))]
    for s, a in zip(batch, (1.0, -1.0, 0.5)):
        s.advantage = a
    real_tokens = sum(len(s.prompt_ids) + len(s.response_ids) for s in batch)  # 8 + 6 + 9 = 23
    trained = []
    for checkpointing in (False, True):
        model = build_model(tiny_config("test", tok), seed=0)
        trainer = PolicyTrainer(model, TrainSpec(lr=1e-3, micro_batch=2, gradient_checkpointing=checkpointing),
                                AlgoSpec(), temperature=1.0, pad_id=0, router_bias_rate=1e-3)
        trainer.opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the (clipped) gradient itself
        trainer.begin_update()
        trainer.accumulate(batch)
        counts = [c.clone() for c in trainer.load.counts]
        trainer.finish_update()
        trained.append((model.state_dict(), counts))
    (plain, plain_counts), (ckpt, ckpt_counts) = trained
    top_k = build_model(tiny_config("test", tok), seed=0).config.num_experts_per_tok
    assert [int(c.sum()) for c in ckpt_counts] == [real_tokens * top_k] * len(ckpt_counts)
    assert all(torch.equal(a, b) for a, b in zip(plain_counts, ckpt_counts))
    for name, tensor in plain.items():
        torch.testing.assert_close(ckpt[name], tensor, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(tensor, build_model(tiny_config("test", tok), seed=0).state_dict()[name])
               for name, tensor in ckpt.items())  # the step did move the weights


def test_compiled_training_matches_eager_and_keeps_the_models_attention():
    """train.compile: the compiled update (eager attention inside it, on a CPU) equals the plain one up to
    float reassociation, and the switch holds only inside the trainer's forward: afterwards the policy, and an
    engine copied from it, use the model's own attention implementation. (A 2-layer dense Qwen2: the switch is
    the model's attention, and the MoE test model takes ~100 s to compile.)"""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from slide.config import AlgoSpec, TrainSpec
    from slide.engine import make_engine
    from slide.rl.sample import Sample
    from slide.rl.trainer import PolicyTrainer
    from slide.tasks.base import Problem

    config = Qwen2Config(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    prob = Problem(prompt="q", answer="1", family="f", level=1)
    batch = [Sample([1, 2, 4, 18, 30][:k], resp, [1] * len(resp), [-1.5] * len(resp), 0, prob, 0)
             for k, resp in ((5, [40, 41, 42]), (4, [50, 51]), (5, [43, 44, 45, 46]))]
    for s, a in zip(batch, (1.0, -1.0, 0.5)):
        s.advantage = a
    trained = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Qwen2ForCausalLM(config)
        own = model.config._attn_implementation
        trainer = PolicyTrainer(model, TrainSpec(lr=1e-3, micro_batch=4, compile=compiled), AlgoSpec(),
                                temperature=1.0, pad_id=0, router_bias_rate=0.0)
        trainer.opt = torch.optim.SGD(model.parameters(), lr=1.0)  # the update is the (clipped) gradient itself
        stats = trainer.step(batch)
        assert trainer._attention == ("eager" if compiled else None) and own == "sdpa"
        assert model.config._attn_implementation == own
        assert make_engine("inprocess", model, 0).model.config._attn_implementation == own
        trained.append((model.state_dict(), stats))
    (plain, a), (comp, b) = trained
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-6)
    for name, tensor in plain.items():
        torch.testing.assert_close(comp[name], tensor, rtol=1e-4, atol=1e-5)
