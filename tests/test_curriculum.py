"""Curriculum sources, dynamic temperature, the output-length schedule and force-answer: unit tests with
hand-derived expectations, and one RL run that resumes to the same metrics with all of them on."""
import json
import random

import pytest

from slide.config import CurriculumSpec, RLConfig, RolloutSpec, TemperatureSpec, load_config
from slide.engine.inprocess import Completion, SamplingParams
from slide.errors import UserError
from slide.model.tokenizer import load_tokenizer
from slide.rl.curriculum import (DifficultyTracker, RLCSSource, TwoStageSource, mid_difficulty_weights,
                                 split_by_difficulty, weighted_sample)
from slide.rl.data import PromptSource
from slide.rl.reward import RewardRunner
from slide.rl.rollout import Rollout, length_limit
from slide.rl.temperature import DynamicTemperature, PlateauDetector, pick_temperature
from slide.tasks import parse_task_specs
from slide.tasks.base import Problem


def test_mid_difficulty_weights_peak_at_target():
    w = mid_difficulty_weights([0.0, 0.5, 1.0, 0.3], target=0.5, width=0.2, floor=0.0)
    assert w[1] == 1.0  # exp(0)
    assert w[0] == pytest.approx(w[2]) == pytest.approx(2.718281828 ** (-0.25 / 0.08))  # exp(-(0.5)^2 / (2*0.04))
    assert w[0] < w[3] < w[1]
    assert min(mid_difficulty_weights([0.0], 0.5, 0.01)) >= 1e-3  # the floor: never impossible to draw


def test_weighted_sample_is_distinct_and_follows_weights():
    rng = random.Random(0)
    counts = [0, 0, 0]
    for _ in range(3000):
        picked = weighted_sample(rng, [1.0, 1.0, 8.0], 2)
        assert len(set(picked)) == 2
        for i in picked:
            counts[i] += 1
    # index 2 carries 80% of the weight: it is in nearly every pair; the two light ones share the other slot
    assert counts[2] > 2800 and abs(counts[0] - counts[1]) < 250


def test_tracker_shrinks_problem_estimates_toward_their_level():
    t = DifficultyTracker(prior_strength=2.0)
    a = Problem("a", "1", "arithmetic", 1)
    b = Problem("b", "1", "arithmetic", 1)
    assert t.estimate(a) == 0.5  # no evidence: Laplace 1/2
    t.observe(a, [1.0, 1.0, 1.0, 0.0])  # 3 of 4
    assert t.level_rate("arithmetic", 1) == pytest.approx(4 / 6)  # (3 + 1) / (4 + 2)
    assert t.estimate(a) == pytest.approx((3 + 2 * 4 / 6) / (4 + 2))
    assert t.estimate(b) == pytest.approx(4 / 6)  # never tried: its level's rate


def test_split_by_difficulty_moderate_and_extreme():
    small = [0, 4, 8, 0, 1, 7]  # successes of 8
    large = [0, 4, 8, 3, 1, 7]  # of 32, including the 8
    mid, extreme = split_by_difficulty(small, large, 8, 32, (0.1, 0.9))
    assert mid == [1, 4, 5]  # 0.5, 0.125, 0.875 lie in [0.1, 0.9]; 0 and 1 do not
    assert extreme == [3]  # 0 of 8 but 3 of 32; row 0 is unsolved even at 32 (never trained: unverified)


def _source(seed=0):
    return PromptSource(parse_task_specs("arithmetic:1-3"), seed)


def test_two_stage_measures_before_each_stage_and_switches_at_stage2():
    cfg = CurriculumSpec(mode="two-stage", pool=12, stage2_step=5, k_small=4, k_large=12)
    src = TwoStageSource(_source(), cfg)
    calls = []

    def measure(problems, k):  # level 1 always solved, level 2 half, level 3 solved only in the extra samples
        calls.append((len(problems), k))
        return [{1: k, 2: k // 2, 3: 0 if k == 4 else 1}[p.level] for p in problems]

    stats = src.start_stage(1, measure)
    assert stats["curriculum/stage"] == 1 and calls == [(12, 4)]
    assert {p.level for p in src.pool} == {2}  # moderate: pass rate 0.5 only
    assert src.start_stage(2, measure) is None  # same stage: nothing measured again
    assert all(p.level == 2 for p in src.next(20))
    stats = src.start_stage(5, measure)
    assert stats["curriculum/stage"] == 2
    zeros = calls[-1][0]
    assert calls[-1][1] == 8 and zeros > 0  # 8 more samples, only for the ones unsolved at k_small
    assert {p.level for p in src.pool} == {3} and stats["curriculum/pool_extreme"] == len(src.pool)


def test_rlcs_prefers_mid_difficulty_and_resumes_exactly():
    cfg = CurriculumSpec(mode="rlcs", pool=30, width=0.1, refresh_after=1000)
    src = RLCSSource(_source(), cfg)
    for p in src.pool:  # teach the tracker: level 1 always right, level 3 always wrong, level 2 half
        src.tracker.observe(p, {1: [1.0] * 8, 2: [1.0, 0.0] * 4, 3: [0.0] * 8}[p.level])
    drawn = [p.level for _ in range(40) for p in src.next(4)]
    assert drawn.count(2) > 0.8 * len(drawn)
    assert 0.4 < src.stats()["curriculum/drawn_est_mean"] < 0.6
    state = src.state_dict()
    after = [p.prompt for p in src.next(8)]
    again = RLCSSource(_source(seed=99), cfg)
    again.load_state_dict(state)
    assert [p.prompt for p in again.next(8)] == after


def test_rlcs_refreshes_problems_drawn_often():
    src = RLCSSource(_source(), CurriculumSpec(mode="rlcs", pool=4, refresh_after=1))
    first = {p.prompt for p in src.pool}
    src.next(4)  # every problem drawn once -> every one replaced
    assert not first & {p.prompt for p in src.pool}


def test_plateau_detector_and_temperature_pick():
    d = PlateauDetector(window=3, min_delta=0.05)
    assert [d.update(v) for v in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]] == [False] * 6  # +0.3 per window: improving
    d = PlateauDetector(window=3, min_delta=0.05)
    assert [d.update(v) for v in [0.5, 0.5, 0.5, 0.52, 0.5, 0.5]] == [False] * 5 + [True]  # +0.0067 < 0.05
    assert d.update(0.5) is False  # needs two fresh windows again
    assert pick_temperature({1.0: 0.50, 1.1: 0.495, 1.2: 0.48, 1.3: 0.30}, tolerance=0.01) == 1.1
    assert pick_temperature({1.0: 0.50, 1.1: 0.40}, tolerance=0.01) == 1.0


def test_dynamic_temperature_rescoring_on_plateau():
    temp = DynamicTemperature(TemperatureSpec(dynamic=True, window=2, candidates=[0.0, 0.2, 0.4]), initial=1.0)
    scored = []

    def score(t):
        scored.append(t)
        return {1.0: 0.6, 1.2: 0.595, 1.4: 0.4}[t]

    outs = [temp.after_step(r, score) for r in [0.3, 0.3, 0.3, 0.3]]
    assert scored == [1.0, 1.2, 1.4] and temp.value == 1.2
    assert outs[-1]["temperature/plateau"] == 1.0 and outs[-1]["temperature"] == 1.2
    off = DynamicTemperature(TemperatureSpec(dynamic=False, window=2), initial=0.7)
    assert [off.after_step(0.3, score)["temperature"] for _ in range(6)] == [0.7] * 6


def test_length_schedule_and_its_validation():
    spec = RolloutSpec(max_new_tokens=96, length_stages=[(1, 32), (10, 64), (20, 96)])
    assert [length_limit(spec, s) for s in (1, 9, 10, 19, 20, 500)] == [32, 32, 64, 64, 96, 96]
    assert length_limit(RolloutSpec(max_new_tokens=80), 7) == 80
    for bad in ("[[2,32]]", "[[1,32],[1,64]]", "[[1,200]]"):
        with pytest.raises(UserError, match="length_stages"):
            load_config(RLConfig, None, [f"rollout.length_stages={bad}"])
    with pytest.raises(UserError, match="mode=sync only"):
        load_config(RLConfig, None, ["mode=async", "curriculum.mode=rlcs"])
    with pytest.raises(UserError, match="stage2_step"):
        load_config(RLConfig, None, ["curriculum.mode=two-stage"])


class ScriptedEngine:
    """Returns fixed token lists; records the calls."""

    def __init__(self, first, tail):
        self.first, self.tail, self.calls, self.version = first, tail, [], 3

    def generate(self, prompts, params, n=1, generator=None):
        self.calls.append((prompts, params, n))
        if len(self.calls) == 1:
            return [[Completion(list(t), [-0.5] * len(t), r, self.version) for t, r in self.first] for _ in prompts]
        return [[Completion(list(self.tail), [-0.25] * len(self.tail), "stop", self.version)] for _ in prompts]


def test_force_answer_appends_think_close_unmasked_only_where_cut():
    tok = load_tokenizer()
    close = tok.encode("</think>\n", add_special_tokens=False)
    thinking = tok.encode("9+1=10 c1", add_special_tokens=False)
    answered = tok.encode("9+1=10</think>\n10", add_special_tokens=False) + [tok.eos_token_id]
    tail = tok.encode("10", add_special_tokens=False) + [tok.eos_token_id]
    engine = ScriptedEngine([(thinking, "length"), (answered, "stop")], tail)
    problem = Problem("What is 9+1?", "10", "arithmetic", 1)
    verify = parse_task_specs("arithmetic:1")[0][0].verify
    rollout = Rollout(engine, tok, SamplingParams(max_new_tokens=len(thinking)), 2, RewardRunner(verify, 5.0),
                      thinking=True, force_answer_tokens=5)
    [group] = rollout.groups([problem])
    forced, normal = group
    assert forced.status == "forced" and normal.status == "completed"
    assert forced.response_ids == thinking + close + tail
    assert forced.loss_mask == [1] * len(thinking) + [0] * len(close) + [1] * len(tail)
    assert forced.behaviour_logprobs == [-0.5] * len(thinking) + [0.0] * len(close) + [-0.25] * len(tail)
    assert forced.reward == 1.0 and normal.reward == 1.0
    assert normal.loss_mask == [1] * len(answered)
    prompts, params, n = engine.calls[1]  # the continuation: prompt + cut response + </think>, 5 tokens, 1 sample
    assert len(prompts) == 1 and prompts[0][-len(close) - len(thinking):] == thinking + close
    assert params.max_new_tokens == 5 and n == 1


def test_rl_with_curriculum_temperature_and_length_schedule_resumes_exactly(sft_model, tmp_path):
    from slide.rl import sync
    from slide.rundir import RunDir
    from tests.test_rl import TINY, make_run, read
    init, _ = sft_model
    overrides = [f"model.init={init}", "data.train=arithmetic:1-2", "steps=4", "save_every=2", "eval_every=2",
                 *TINY, "curriculum.mode=rlcs", "curriculum.pool=16", "temperature.dynamic=true",
                 "temperature.window=2", "temperature.min_delta=1.0", "temperature.eval_prompts=4",
                 "temperature.eval_k=2",
                 "rollout.length_stages=[[1,24],[3,40]]", "rollout.force_answer=true", "rollout.force_answer_tokens=4"]
    cfg, run = make_run(tmp_path, *overrides, name="whole")
    sync.run(cfg, run)
    whole = read(run.path / "metrics.jsonl")
    assert [r["max_new_tokens"] for r in whole] == [24, 24, 40, 40]
    # 2 windows of 2 steps; min_delta 1.0 (no reward mean can rise that much) makes step 4 a plateau for sure
    assert whole[3]["temperature/plateau"] == 1.0 and "temperature/plateau" not in whole[2]
    assert "curriculum/pool_est_mean" in whole[0] and "level_mean" in whole[0]

    class Stop(Exception):
        pass

    def stop_at_3(step, metrics):
        if step == 3:
            raise Stop

    cfg, run = make_run(tmp_path, *overrides, name="killed")
    with pytest.raises(Stop):
        sync.run(cfg, run, progress=stop_at_3)
    run, ckpt = RunDir.open(str(run.path))
    sync.run(cfg, run, ckpt)
    resumed = read(run.path / "metrics.jsonl")

    def strip(rows):
        return [json.dumps({k: v for k, v in r.items() if not k.startswith("time/")}, sort_keys=True) for r in rows]
    assert strip(resumed) == strip(whole)
