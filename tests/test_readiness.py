"""The readiness check before RL, self-calibrating temperature and the automatic curriculum switch."""
import json
import math

import pytest

from slide.cli import main
from slide.config import RLConfig, TemperatureSpec, load_config
from slide.engine.inprocess import Completion
from slide.eval.passk import evaluate, verifiers
from slide.rl.curriculum import auto_mode
from slide.eval.chance import decoys
from slide.rl.readiness import Measured, check, guessing, has_levels, measure, should_stop, training_sample, verdict
from slide.rl.temperature import (DynamicTemperature, choose_temperature, curve_scores, expected_signal_share,
                                  paired_se)
from slide.tasks import parse_task_specs


class FixedEngine:
    """The engine interface answering by sample index: sample j of every prompt says answers[j % len(answers)]
    (one answer: a model that always writes one fixed string, greedy or sampled)."""

    version = 0

    def __init__(self, tok, answers):
        self.stop = tok.convert_tokens_to_ids("<|user|>")
        self.outputs = [tok.encode(f"</think>{a}", add_special_tokens=False) + [self.stop] for a in answers]

    def generate(self, prompts, params, n=1, generator=None):
        return [[Completion(list(self.outputs[j % len(self.outputs)]), [0.0] * len(self.outputs[j % len(self.outputs)]),
                            "stop") for j in range(n)] for _ in prompts]


@pytest.fixture
def data(tmp_path):
    """Four labelled rows on two levels: answers 42, 7, 42, 13."""
    path = tmp_path / "rows.jsonl"
    rows = [("a?", 42, 1), ("b?", 7, 1), ("c?", 42, 2), ("d?", 13, 2)]
    path.write_text("".join(json.dumps({"prompt": p, "answer": a, "level": lv}) + "\n" for p, a, lv in rows))
    specs = parse_task_specs(str(path))
    problems = sorted(specs[0][0].problems(), key=lambda p: p.prompt)
    return specs, problems


def test_a_model_that_always_answers_42(tok, data):
    specs, problems = data
    report = check(FixedEngine(tok, ["42"]), tok, problems, verifiers(specs), n=8, temperature=1.0, max_new_tokens=8,
                   levels=has_levels(specs))
    assert report["greedy_pass@1"] == 0.5 and report["sampled_pass@1"] == 0.5 and report["pass@8"] == 0.5
    assert report["signal_share"] == 0.0 and report["greedy_sampled_gap"] == 0.0 and report["moderate_prompts"] == 0
    assert report["status"] == "none" and "easier levels first" in report["advice"]


def test_an_engine_whose_samples_disagree_gives_exact_signal(tok, data):
    specs, problems = data
    m = measure(FixedEngine(tok, ["42", "7"]), tok, problems, verifiers(specs), n=4, temperature=1.0, max_new_tokens=8)
    assert m.correct == [2, 2, 2, 0] and m.signal == [True, True, True, False]
    assert m.pass1 == 6 / 16 and m.share == 0.75 and m.pass_n == 0.75
    greedy = measure(FixedEngine(tok, ["42", "7"]), tok, problems, verifiers(specs), n=4, temperature=0.0,
                     max_new_tokens=8)
    assert greedy.n == 1 and greedy.correct == [1, 0, 1, 0]  # greedy: one answer, the first


class KnowingEngine(FixedEngine):
    """Even samples answer each prompt right (it reads the prompt's letter: a? 42, b? 7, c? 42, d? 13), odd ones
    say 42 whatever the prompt."""

    def __init__(self, tok):
        super().__init__(tok, ["42", "7", "13"])
        self.tok, self.by_answer = tok, {"a": 0, "b": 1, "c": 0, "d": 2}

    def generate(self, prompts, params, n=1, generator=None):
        def out(prompt, j):
            letter = self.tok.decode(prompt).split("?")[0][-1]
            tokens = self.outputs[self.by_answer[letter] if j % 2 == 0 else 0]
            return Completion(list(tokens), [0.0] * len(tokens), "stop")
        return [[out(p, j) for j in range(n)] for p in prompts]


def test_chance_scores_each_prompts_samples_against_another_prompts_problem(tok, data):
    """Decoys pair prompts of one level (a <-> b, c <-> d). Samples saying 42, 7, 42, 7 whatever the prompt score
    as well against the decoy as against their own prompt: status `chance` (its signal is luck), and
    readiness.stop_if=thin stops it. Samples that read the prompt score less against the decoy: not chance."""
    specs, problems = data
    assert decoys(problems) == [1, 0, 3, 2]
    m = measure(FixedEngine(tok, ["42", "7"]), tok, problems, verifiers(specs), n=4, temperature=1.0,
                max_new_tokens=8, chance=True)
    assert m.correct == [2, 2, 2, 0] and m.decoy == [2, 2, 0, 2]  # c's 42/7 against 13: 0; d's against 42: 2
    own, luck, se = m.chance()
    assert own == luck == 6 / 16 and se == pytest.approx(math.sqrt((2 * 0.5 ** 2) / 3 / 4))
    report = check(FixedEngine(tok, ["42", "7"]), tok, problems, verifiers(specs), n=4, temperature=1.0,
                   max_new_tokens=8, levels=True)
    assert report["status"] == "chance" and "luck" in report["advice"] and report["chance_pass@1"] == 6 / 16
    assert report["above_chance"] == 0.0 and should_stop(report, "thin", 0.25) and not should_stop(report, "none", 0.25)
    knowing = measure(KnowingEngine(tok), tok, problems, verifiers(specs), n=4, temperature=1.0, max_new_tokens=8,
                      chance=True)
    assert knowing.correct == [4, 2, 4, 2] and knowing.decoy == [0, 2, 0, 2]  # only the odd 42s hit a decoy
    assert knowing.chance()[:2] == (12 / 16, 4 / 16) and not guessing(knowing)
    assert verdict(0.5, knowing, knowing, levels=True, thin_share=0.25)[0] == "ready"
    assert measure(FixedEngine(tok, ["42"]), tok, problems, verifiers(specs), n=2, temperature=1.0,
                   max_new_tokens=8).decoy is None  # only where asked: it costs a verifier call per sample
    summary = evaluate(FixedEngine(tok, ["42"]), tok, problems, verifiers(specs), k=1, max_new_tokens=8,
                       chance=True)["summary"]  # greedy: a? c? right, and b?'s and d?'s 42 right for their decoys
    assert summary["pass@1"] == summary["chance_pass@1"] == 0.5 and summary["above_chance"] == 0.0
    assert summary["above_chance_se"] == pytest.approx(math.sqrt(4 / 3 / 4)) and summary["lucky"] == 1.0


def test_verdict_names_the_likely_remedy():
    def m(t, pass1, share, pass_n=0.5):
        return _fixed(t, pass1, share, pass_n)
    ready = verdict(0.3, m(1.0, 0.2, 0.6), m(1.0, 0.2, 0.6), levels=False, thin_share=0.25)
    assert ready[0] == "ready"
    status, advice = verdict(0.0, m(1.0, 0.0, 0.0, 0.0), m(1.0, 0.0, 0.0, 0.0), levels=False, thin_share=0.25)
    assert status == "none" and advice.split("try ")[1].startswith("more SFT")
    status, advice = verdict(0.4, m(1.0, 0.05, 0.1), m(0.6, 0.3, 0.4), levels=False, thin_share=0.25)
    assert status == "thin" and "temperature 0.6" in advice and "dynamic sampling" in advice
    assert "dynamic sampling" not in verdict(0.0, m(1.0, 0.0, 0.0, 0.0), m(1.0, 0.0, 0.0, 0.0), False, 0.25)[1]
    _, advice = verdict(0.4, m(1.0, 0.05, 0.1), m(1.0, 0.05, 0.1), levels=True, thin_share=0.25)
    assert "a lower temperature" in advice and "easier levels first" in advice
    _, advice = verdict(1.0, m(1.0, 0.97, 0.1), m(1.0, 0.97, 0.1), levels=True, thin_share=0.25)
    assert "harder problems" in advice


def _fixed(t, pass1, share, pass_n):
    """A Measured with these summary numbers."""
    return FixedMeasured(t, 8, [], [], pass1, share, pass_n)


class FixedMeasured(Measured):
    def __init__(self, t, n, correct, signal, pass1, share, pass_n):
        super().__init__(t, n, correct, signal)
        self._nums = (pass1, share, pass_n)

    pass1 = property(lambda self: self._nums[0])
    share = property(lambda self: self._nums[1])
    pass_n = property(lambda self: self._nums[2])


def test_expected_signal_share_and_temperature_choice_on_synthetic_curves():
    assert expected_signal_share([0.5], 2) == 0.5 and expected_signal_share([0.0, 1.0], 8) == 0.0
    assert expected_signal_share([0.25], 4) == pytest.approx(1 - 0.25 ** 4 - 0.75 ** 4)
    # a policy sharp at low temperature (everything right: no signal) and lost at high (everything wrong)
    sharp = {0.5: [0.97] * 10, 1.0: [0.5] * 10, 1.5: [0.02] * 10}
    assert choose_temperature(curve_scores(sharp, 8), tolerance=0.02) == 1.0
    # the case: greedy knows, sampling at 1.0 almost never finds it; lower wins
    cold = {0.6: [0.3] * 5 + [0.0] * 5, 0.8: [0.1] * 5 + [0.0] * 5, 1.0: [0.005] * 5 + [0.0] * 5}
    assert choose_temperature(curve_scores(cold, 8), tolerance=0.02) == 0.6
    # an easy set: more exploration carries more signal, so it may raise
    easy = {0.8: [0.99] * 10, 1.0: [0.95] * 10, 1.2: [0.8] * 10}
    assert choose_temperature(curve_scores(easy, 8), tolerance=0.02) == 1.2
    # within tolerance of the best share, the more accurate (then the lower) temperature
    assert choose_temperature({0.7: (0.50, 0.4), 1.0: (0.52, 0.2), 1.3: (0.30, 0.1)}, tolerance=0.05) == 0.7
    assert choose_temperature({0.7: (0.50, 0.4), 1.0: (0.52, 0.2)}, tolerance=0.0) == 1.0
    assert choose_temperature({0.9: (0.5, 0.3), 1.1: (0.5, 0.3)}, tolerance=0.0) == 0.9



def test_a_temperature_moves_only_on_a_difference_larger_than_its_noise():
    """32 prompts, the same at both temperatures (1 = that prompt's group carried a signal)."""
    at_06 = tuple([1] * 16 + [0] * 16)  # share 0.5
    clear = tuple([1] * 22 + [0] * 10)  # 0.6875: the same 16 and 6 more. Differences: six -1, 26 zeros;
    # mean -0.1875, sample variance (6 * 0.8125^2 + 26 * 0.1875^2) / 31 = 4.875 / 31, SE sqrt(4.875 / 31 / 32)
    assert paired_se((0.5, 0.3, at_06), (0.6875, 0.3, clear)) == pytest.approx(math.sqrt(4.875 / 31 / 32))  # 0.070
    assert choose_temperature({0.6: (0.5, 0.3, at_06), 1.2: (0.6875, 0.2, clear)}, 0.05, current=0.6) == 1.2
    # 0.625 on other prompts (8-27): eight +1, twelve -1, twelve 0; variance 19.5 / 31, 2 SE = 0.28 > 0.125: a tie
    noisy = tuple([0] * 8 + [1] * 20 + [0] * 4)
    assert paired_se((0.5, 0, at_06), (0.625, 0, noisy)) == pytest.approx(math.sqrt(19.5 / 31 / 32))
    assert choose_temperature({0.6: (0.5, 0.2, at_06), 1.2: (0.625, 0.3, noisy)}, 0.05, current=0.6) == 0.6
    assert choose_temperature({0.6: (0.5, 0.3, at_06), 1.2: (0.625, 0.2, noisy)}, 0.05, current=1.2) == 1.2
    # no current among the ties (the first pick of a run at temperature 1.0): the most accurate of them
    assert choose_temperature({0.6: (0.5, 0.3, at_06), 1.2: (0.625, 0.2, noisy)}, 0.05, current=1.0) == 0.6
    # without per-prompt signals only the tolerance counts, as before
    assert choose_temperature({0.6: (0.5, 0.3), 1.2: (0.625, 0.2)}, 0.05, current=0.6) == 1.2

def test_calibration_rechecks_and_may_lower_the_temperature():
    spec = TemperatureSpec(calibrate=True, calibrate_grid=[0.6, 1.0], recheck_every=3, window=2)
    temp = DynamicTemperature(spec, initial=1.0)
    good_at = {"t": 0.6}
    signal = lambda t: (0.8, 0.5) if t == good_at["t"] else (0.2, 0.5)  # noqa: E731
    assert temp.after_step(0.1, None, step=1, signal=signal) == {"temperature": 1.0}
    assert temp.after_step(0.5, None, step=2, signal=signal) == {"temperature": 1.0}  # rising: no plateau
    out = temp.after_step(0.9, None, step=3, signal=signal)
    assert temp.value == 0.6 and out["temperature/signal@0.6"] == 0.8 and out["temperature/calibrated"] == 1.0
    good_at["t"] = 1.0
    temp.after_step(0.9, None, step=6, signal=signal)
    assert temp.value == 1.0
    temp.after_step(0.9, None, step=9, signal=lambda t: (0.0, 0.0))  # no signal at any temperature: keep it
    assert temp.value == 1.0
    good_at["t"] = 0.6
    for step in (10, 11, 13, 14):  # a flat reward: plateaus fire, but only every 3rd step re-measures
        assert "temperature/calibrated" not in temp.after_step(0.9, None, step=step, signal=signal)
    on_plateaus = DynamicTemperature(spec.model_copy(update={"recheck_every": 0}), initial=1.0)
    fired = [s for s in range(1, 9) if "temperature/calibrated" in on_plateaus.after_step(0.9, None, s, signal=signal)]
    assert fired == [4, 8] and on_plateaus.value == 0.6  # window 2: four flat rewards make a plateau
    # GLM's plateau rule with a negative offset lowers too; candidates at or below 0 are skipped
    dyn = DynamicTemperature(TemperatureSpec(dynamic=True, window=2, candidates=[-0.3, 0.0, -1.0]), initial=1.0)
    for r in (0.5, 0.5, 0.5):
        dyn.after_step(r, lambda t: 0.5 if t < 1 else 0.1)
    out = dyn.after_step(0.5, lambda t: 0.5 if t < 1 else 0.1)
    assert dyn.value == 0.7 and set(k for k in out if k.startswith("temperature/score")) == {
        "temperature/score@0.7", "temperature/score@1"}


def test_curriculum_switches_on_only_when_the_signal_is_thin():
    assert auto_mode(0.4, 0.25, levels=True, moderate_prompts=3) is None
    assert auto_mode(0.1, 0.25, levels=True, moderate_prompts=0) == "rlcs"
    assert auto_mode(0.1, 0.25, levels=False, moderate_prompts=2) == "rlcs"  # per-problem pass rates steer it
    assert auto_mode(0.0, 0.25, levels=False, moderate_prompts=0) is None  # nothing to select from


def test_training_sample_avoids_held_out_prompts(data):
    specs, problems = data
    sample = training_sample(specs, 10, seed=0, held_out=problems[:2])
    assert {p.prompt for p in sample} == {"c?", "d?"}


@pytest.mark.parametrize("rows, message", [("", "no rows"), ('{"prompt": "a?"}\n', "missing field 'answer'")])
def test_ready_refuses_empty_or_unlabelled_data(tmp_path, capsys, rows, message):
    path = tmp_path / "rows.jsonl"
    path.write_text(rows)
    assert main(["ready", str(tmp_path), "--data", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_ready_refuses_a_missing_checkpoint_and_bad_flags(tmp_path, capsys):
    assert main(["ready", str(tmp_path / "nope"), "--data", "arithmetic:1"]) == 2
    assert main(["ready", str(tmp_path), "--data", "arithmetic:1", "--n", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)
    assert "no such checkpoint folder" in err[0] and "--n >= 2" in err[1]


def test_rl_run_checks_readiness_then_acts_on_it(tmp_path):
    from slide.rl import sync
    from slide.rundir import RunDir
    cfg = load_config(RLConfig, None, [f"out_dir={tmp_path}", "steps=2", "eval_every=0", "data.train=arithmetic:1-2",
                                       "data.eval_prompts=4", "rollout.prompts_per_step=2", "rollout.n=2",
                                       "rollout.max_new_tokens=6", "temperature.calibrate=true",
                                       "temperature.calibrate_grid=[0.5,1.0]", "temperature.recheck_every=2",
                                       "curriculum.auto=true", "readiness.thin_share=1.0",
                                       "algo.dynamic_sampling=auto"])
    run = RunDir.create(cfg.out_dir, cfg.name, "{}", tensorboard=False)
    sync.run(cfg, run)
    report = json.loads((run.path / "readiness.json").read_text())
    assert report["prompts"] == 4 and report["n"] == 2 and set(report["by_temperature"]) == {"0.5", "1.0"}
    assert report["status"] in ("thin", "none") and report["curriculum"] == "rlcs"  # thin_share 1: always thin
    rows = [json.loads(line) for line in (run.path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["ready/signal_share"] == report["signal_share"] and rows[0]["temperature/calibrated"] == 1.0
    assert "curriculum/pool_est_mean" in rows[0] and "temperature/signal@0.5" in rows[1]  # rlcs on; step 2 re-checked
    assert "mode: rlcs" in (run.path / "config.yaml").read_text()  # a resumed run rebuilds the same source
    # thin: dynamic sampling switched on (step 1 drops the groups without a signal), and kept for a resume
    assert report["dynamic_sampling"] == "on" and rows[0]["ready/dynamic_sampling"] == 1.0
    assert load_config(RLConfig, str(run.path / "config.yaml")).algo.dynamic_sampling is True
    assert rows[0]["sampling/dropped_all_wrong"] > 0  # a random start is never right: its groups are dropped


def test_dynamic_sampling_auto_stays_off_when_the_signal_is_not_thin(tmp_path):
    """thin_share 0: no start is thin, so auto trains every group as sampled (the demo's arithmetic start: ready)."""
    from slide.rl import sync
    from slide.rundir import RunDir
    cfg = load_config(RLConfig, None, [f"out_dir={tmp_path}", "steps=1", "eval_every=0", "data.train=arithmetic:1",
                                       "data.eval_prompts=2", "rollout.prompts_per_step=2", "rollout.n=2",
                                       "rollout.max_new_tokens=4", "readiness.thin_share=0.0",
                                       "algo.dynamic_sampling=auto"])
    run = RunDir.create(cfg.out_dir, cfg.name, "{}", tensorboard=False)
    sync.run(cfg, run)
    row = json.loads((run.path / "metrics.jsonl").read_text().splitlines()[0])
    assert json.loads((run.path / "readiness.json").read_text())["dynamic_sampling"] == "off"
    assert row["ready/dynamic_sampling"] == 0.0 and row["groups_trained"] == 2  # a random start: all-0 groups kept
    assert load_config(RLConfig, str(run.path / "config.yaml")).algo.dynamic_sampling is False


def test_stop_if_judges_the_share_at_the_temperature_the_run_samples_at():
    def report(shares, chosen=None):
        r = {"temperature": 1.0, "signal_share": shares[1.0],
             "by_temperature": {t: {"signal_share": v} for t, v in shares.items()}}
        return r if chosen is None else {**r, "chosen_temperature": chosen}
    none, thin = report({1.0: 0.0}), report({1.0: 0.1})
    assert [should_stop(none, s, 0.25) for s in ("never", "none", "thin")] == [False, True, True]
    assert [should_stop(thin, s, 0.25) for s in ("never", "none", "thin")] == [False, False, True]
    assert not should_stop(report({1.0: 0.5}), "thin", 0.25)
    calibrated = report({0.7: 0.0, 1.0: 0.0, 1.3: 0.3}, chosen=1.3)  # nothing at 1.0, calibration chose 1.3
    assert not should_stop(calibrated, "thin", 0.25) and should_stop(report({0.7: 0.3, 1.0: 0.0}, 1.0), "none", 0.25)


def test_rl_stops_before_step_1_when_no_group_has_a_signal(tmp_path, capsys):
    """A random-init model never answers arithmetic right: with readiness.stop_if=none the run ends before step 1
    with one error line (exit 2) and keeps readiness.json; nothing trained, no checkpoint."""
    code = main(["rl", f"out_dir={tmp_path}", "name=cold", "steps=2", "eval_every=0", "data.train=arithmetic:2",
                 "data.eval_prompts=4", "rollout.prompts_per_step=2", "rollout.n=2", "rollout.max_new_tokens=6",
                 "readiness.stop_if=none", "threads=1"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(err) == 1
    assert "readiness.stop_if=none" in err[0] and "more SFT" in err[0]
    report = json.loads((tmp_path / "cold" / "readiness.json").read_text())
    assert report["status"] == "none" and report["signal_share"] == 0.0
    assert not (tmp_path / "cold" / "checkpoints").exists() or not any((tmp_path / "cold" / "checkpoints").iterdir())
