"""The readiness check before RL: will sampling from this checkpoint give GRPO anything to learn from?

    slide ready runs/sft/final --data arithmetic:2 --n 8 --temperature 1.0     # a table and a verdict
    slide rl CONFIG ...          # runs it before step 1 (readiness.enabled, on by default): readiness.json,
                                 # stderr, and step 1's metrics row (ready/*)

GRPO learns only from groups whose n rewards disagree: a group all right or all wrong has zero advantage
everywhere (and dynamic sampling drops it). A cold start can answer 20% of prompts greedily and still
sample a right answer only 1% of the time at temperature 1: then almost every group is all-0 and RL barely
moves. The check measures, on a bounded sample of training prompts (never held-out ones), with the run's
own prompts, verifiers and sampling:
- greedy pass@1, and sampled pass@1 and pass@n at the rollout temperature (n = rollout.n samples each);
- the share of groups that carry a signal (rewards not all equal) and the greedy/sampled gap;
- chance: the same samples scored against another prompt's problem (same family and level). Answers that
  ignore the prompt score as well there as on their own prompt: then the signal is luck (a count guessed right),
  and RL reinforces guesses, not a skill;
- with temperature.calibrate, the same at each temperature of the grid, and the one chosen;
and says what to do when the signal is thin: more SFT (nothing is ever right), a lower temperature
(greedy knows more than sampling shows), easier levels first (some levels are moderate), harder problems
(everything is right).
"""
from __future__ import annotations

from dataclasses import dataclass

from slide.config import AgentSpec
from slide.engine.inprocess import SamplingParams
from slide.eval.chance import above_chance, chance_line, decoy_correct, lucky
from slide.eval.passk import pass_at_k
from slide.model.tokenizer import stop_token_ids
from slide.rl.data import PromptSource
from slide.rl.reward import RewardRunner, by_family
from slide.rl.rollout import Rollout
from slide.tasks.base import Problem

READY_SALT = 4_243_517  # the check's prompts come from their own stream: measuring never moves a run's data


def training_sample(specs, count: int, seed: int, held_out: list[Problem] = ()) -> list[Problem]:
    """Up to `count` distinct training prompts (never held-out ones) drawn as a run draws them."""
    source, seen, out = PromptSource(specs, seed + READY_SALT, held_out), set(), []
    for p in source.next(4 * count):
        if p.key not in seen and len(out) < count:
            seen.add(p.key)
            out.append(p)
    return out


@dataclass
class Measured:
    """n samples per prompt at one temperature: correct samples and whether the group's rewards disagree
    (and, where measured, how many of them are right for the prompt's decoy: -1 where it has none)."""
    temperature: float
    n: int
    correct: list[int]
    signal: list[bool]
    decoy: list[int] | None = None

    @property
    def pass1(self) -> float:
        return sum(self.correct) / max(1, self.n * len(self.correct))

    @property
    def pass_n(self) -> float:
        return sum(pass_at_k(self.n, c, self.n) for c in self.correct) / max(1, len(self.correct))

    @property
    def share(self) -> float:
        return sum(self.signal) / max(1, len(self.signal))

    def score(self) -> tuple[float, float, tuple[int, ...]]:
        """(signal share, sampled pass@1, signal per prompt as 1/0): what slide.rl.temperature.choose_temperature
        weighs (the third: the noise of a difference between temperatures measured on the same prompts)."""
        return self.share, self.pass1, tuple(int(s) for s in self.signal)

    def chance(self) -> tuple[float, float, float] | None:
        """(sampled pass@1, pass@1 scored against the decoys, standard error of their difference) over the prompts
        that have a decoy, or None. The difference is what the answers know about their own prompt."""
        return above_chance(self.correct, self.decoy, self.n) if self.decoy else None


def measure(engine, tok, problems: list[Problem], verify: dict, n: int, temperature: float, max_new_tokens: int,
            thinking: bool = True, agent: AgentSpec = AgentSpec(), generator=None,
            timeout_s: float = 5.0, chance: bool = False) -> Measured:
    """n samples per problem at `temperature` (0: one greedy answer each), rewarded by the run's verifiers; with
    `chance`, each single-turn group is also scored against its decoy problem (slide/eval/chance.py)."""
    n = 1 if temperature == 0 else n
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens,
                            stop_token_ids=tuple(stop_token_ids(tok)))
    rollout = Rollout(engine, tok, params, n, RewardRunner(by_family(verify), timeout_s), thinking, agent)
    groups = rollout.groups(problems, generator=generator)
    rewards = [[s.reward for s in g] for g in groups]
    decoy = decoy_correct(rollout.reward, tok, problems, groups) if chance else None
    return Measured(temperature, n, [sum(r >= 1.0 for r in rs) for rs in rewards],
                    [max(rs) != min(rs) for rs in rewards], decoy)


def has_levels(specs) -> bool:
    """True when some task of the data offers more than one level (an easier one to start from)."""
    return any(len(levels) > 1 for _, levels in specs)


def guessing(at_t: Measured) -> bool:
    """True when the samples' right answers are mostly luck (slide/eval/chance.py)."""
    c = at_t.chance()
    return c is not None and lucky(*c)


def verdict(greedy: float, at_t: Measured, best: Measured, levels: bool, thin_share: float) -> tuple[str, str]:
    """(status, advice): `ready` when at least `thin_share` of groups carry a signal at the rollout temperature,
    else `thin` (or `none` when no group does), with the likely remedy first; `chance` when the groups that
    carry one owe it to luck (`guessing`)."""
    share = at_t.share
    if share > 0 and guessing(at_t):
        own, luck, se = at_t.chance()
        return "chance", (f"the samples score {luck:.0%} against other prompts' problems and {own:.0%} against their "
                          f"own ({own - luck:+.0%} +- {se:.0%}): their right answers are mostly luck, so much of the "
                          f"{share:.0%} of groups with a reward signal rewards guesses; try more SFT, or a base that "
                          "holds the skill")
    if share >= thin_share:
        return "ready", f"{share:.0%} of groups would carry a reward signal at temperature {at_t.temperature:g}"
    remedies = []
    if at_t.pass_n < 0.05 and greedy < 0.05:
        remedies.append("more SFT: the start is almost never right, greedy or sampled")
    if 0 < share and at_t.pass1 <= 0.9:  # measured on the new task families: the largest gain of these remedies
        remedies.append("dynamic sampling: train on the groups that carry a signal, refilled "
                        "(algo.dynamic_sampling=true; =auto switches it on for a thin start)")
    if best.temperature != at_t.temperature and best.share > share:
        remedies.append(f"temperature {best.temperature:g}: {best.share:.0%} of groups carry a signal there "
                        f"(temperature.calibrate=true picks it)")
    elif greedy - at_t.pass1 > 0.1:
        remedies.append(f"a lower temperature: greedy answers {greedy:.0%} right but samples at "
                        f"{at_t.temperature:g} only {at_t.pass1:.0%} (temperature.calibrate=true measures a grid)")
    if at_t.pass1 > 0.9:
        remedies.append("harder problems: nearly every sample is right already")
    elif levels:
        remedies.append("easier levels first (curriculum.mode=rlcs, or curriculum.auto=true)")
    if not remedies:
        remedies.append("more SFT, then check again")
    status = "none" if share == 0 else "thin"
    return status, f"only {share:.0%} of groups would carry a reward signal; try " + "; or ".join(remedies)


def check(engine, tok, problems: list[Problem], verify: dict, n: int, temperature: float, max_new_tokens: int,
          grid: list[float] = (), thin_share: float = 0.25, levels: bool = False, thinking: bool = True,
          agent: AgentSpec = AgentSpec(), generator=None) -> dict:
    """The readiness report: the numbers at `temperature` (and at each of `grid`), a status and advice."""
    def at(t: float) -> Measured:
        return measure(engine, tok, problems, verify, n, t, max_new_tokens, thinking, agent, generator,
                       chance=t == temperature)

    greedy = at(0.0).pass1
    by_t = {t: at(t) for t in sorted({temperature, *grid})}
    here = by_t[temperature]
    best = max(by_t.values(), key=lambda m: (m.share, m.pass1))
    status, advice = verdict(greedy, here, best, levels, thin_share)
    chance = here.chance()
    return {"prompts": len(problems), "n": n, "temperature": temperature, "greedy_pass@1": greedy,
            "sampled_pass@1": here.pass1, f"pass@{n}": here.pass_n, "signal_share": here.share,
            "greedy_sampled_gap": greedy - here.pass1,
            **({"chance_pass@1": chance[1], "above_chance": chance[0] - chance[1], "above_chance_se": chance[2]}
               if chance else {}),
            "moderate_prompts": sum(0 < c < n for c in here.correct),
            "by_temperature": {t: {"sampled_pass@1": m.pass1, f"pass@{n}": m.pass_n, "signal_share": m.share,
                                   "signal_by_prompt": [int(s) for s in m.signal]} for t, m in by_t.items()},
            "status": status, "advice": advice}


def scores(report: dict) -> dict[float, tuple[float, float]]:
    """{temperature: (signal share, sampled pass@1, signal per prompt)} of a report (for choose_temperature)."""
    return {t: (m["signal_share"], m["sampled_pass@1"], tuple(m["signal_by_prompt"]))
            for t, m in report["by_temperature"].items()}


def metrics(report: dict) -> dict[str, float]:
    """The report as flat `ready/*` metrics (status: 1 ready, 0.5 thin, 0.25 chance, 0 none)."""
    flat = {f"ready/{k}": v for k, v in report.items() if isinstance(v, (int, float))}
    flat.update({f"ready/signal_share@{t:g}": m["signal_share"] for t, m in report["by_temperature"].items()})
    flat["ready/status"] = {"ready": 1.0, "thin": 0.5, "chance": 0.25, "none": 0.0}[report["status"]]
    return flat


def print_report(report: dict, title: str = "readiness for RL", stderr: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table
    n = report["n"]
    table = Table(title=f"{title} ({report['prompts']} training prompts, {n} samples each)")
    for col in ("temperature", "sampled pass@1", f"pass@{n}", "groups with signal"):
        table.add_column(col, justify="right")
    table.add_row("greedy", f"{report['greedy_pass@1']:.3f}", "", "")
    for t, m in report["by_temperature"].items():
        mark = " (rollout)" if t == report["temperature"] else ""
        table.add_row(f"{t:g}{mark}", f"{m['sampled_pass@1']:.3f}", f"{m[f'pass@{n}']:.3f}", f"{m['signal_share']:.3f}")
    console = Console(stderr=stderr)
    console.print(table)
    if "chance_pass@1" in report:
        console.print(chance_line(report, "sampled pass@1", "samples"))
    console.print(f"{report['status']}: {report['advice']}")


def should_stop(report: dict, stop_if: str, thin_share: float) -> bool:
    """readiness.stop_if: whether the signal share at the temperature the run will sample at (the calibrated one,
    if chosen) is nil (`none`) or under `thin_share` or owed to luck (`thin`)."""
    chosen = report.get("chosen_temperature", report["temperature"])
    share = report["by_temperature"].get(chosen, {"signal_share": report["signal_share"]})["signal_share"]
    return {"never": False, "none": share == 0, "thin": share < thin_share or report.get("status") == "chance"}[stop_if]


class RunReadiness:
    """The check inside `slide rl` (sync mode): before step 1 it measures, reports and acts (temperature.calibrate
    picks the temperature, curriculum.auto switches a curriculum on, algo.dynamic_sampling=auto switches dynamic
    sampling on when the signal is thin); `signal(t)` re-measures for calibration."""

    def __init__(self, cfg, parts):
        self.cfg, self.p = cfg, parts
        self.specs = getattr(parts.source, "base", parts.source).specs
        count = min(cfg.readiness.prompts, 2 * cfg.rollout.prompts_per_step)  # about two steps' rollouts
        self.problems = training_sample(self.specs, count, cfg.seed, parts.held_out)

    def _kw(self, engine) -> dict:
        """The measurement's settings. Its samples come from their own stream, seeded by the run's seed and the
        weights' version: measuring never moves the run's own sampling (a run trains as it would unchecked), and
        a resumed run re-measures exactly."""
        from slide.device import generator
        c = self.cfg
        stream = generator(self.p.device, c.seed + READY_SALT + 7919 * getattr(engine, "version", 0))
        return dict(max_new_tokens=c.rollout.max_new_tokens, thinking=c.rollout.thinking, agent=c.agent,
                    generator=stream)

    def signal(self, engine, temperature: float) -> tuple[float, float, tuple[int, ...]]:
        """(signal share, sampled pass@1, signal per prompt) of the sample at `temperature` with the engine's
        current weights."""
        return measure(engine, self.p.tok, self.problems, self.p.verify, self.cfg.rollout.n, temperature,
                       **self._kw(engine)).score()

    def before_training(self, run_dir, engine) -> dict[str, float]:
        """Run the check (if enabled or needed by calibrate / curriculum.auto); metrics for step 1's row."""
        import json
        import sys
        from slide.config import dump_config
        from slide.rl.curriculum import auto_mode, make_source
        c = self.cfg
        auto_drop = c.algo.dynamic_sampling == "auto"
        if not (c.readiness.enabled or c.temperature.calibrate or c.curriculum.auto or auto_drop):
            return {}
        grid = c.temperature.calibrate_grid if c.temperature.calibrate else []
        report = check(engine, self.p.tok, self.problems, self.p.verify, c.rollout.n, c.rollout.temperature,
                       grid=grid, thin_share=c.readiness.thin_share, levels=has_levels(self.specs), **self._kw(engine))
        out = metrics(report)
        if c.temperature.calibrate:
            measured = {t: v for t, v in scores(report).items() if t in grid}
            out.update(self.p.temperature.calibrate(None, measured))
            report["chosen_temperature"] = self.p.temperature.value
        mode = auto_mode(report["signal_share"], c.readiness.thin_share, has_levels(self.specs),
                         report["moderate_prompts"]) if c.curriculum.auto and c.curriculum.mode == "none" else None
        decided = {}  # what the check switched, written to the run's config.yaml so that a resume keeps it
        if mode:
            decided["curriculum"] = c.curriculum.model_copy(update={"mode": mode})
            self.p.source = make_source(decided["curriculum"], self.p.source)
            report["curriculum"] = mode
            out["ready/curriculum_switched"] = 1.0
        if auto_drop:  # a thin signal: train on the groups that carry one, refilled, instead of diluting them
            self.p.dynamic_sampling = report["signal_share"] < c.readiness.thin_share
            decided["algo"] = c.algo.model_copy(update={"dynamic_sampling": self.p.dynamic_sampling})
            report["dynamic_sampling"] = "on" if self.p.dynamic_sampling else "off"
            out["ready/dynamic_sampling"] = float(self.p.dynamic_sampling)
        if decided:
            (run_dir.path / "config.yaml").write_text(dump_config(c.model_copy(update=decided)))
        (run_dir.path / "readiness.json").write_text(json.dumps(report, indent=2))
        print_report(report, stderr=True)
        if should_stop(report, c.readiness.stop_if, c.readiness.thin_share):
            from slide.errors import UserError
            raise UserError(f"readiness ({run_dir.path / 'readiness.json'}): {report['advice']}; stopped before "
                            f"step 1 (readiness.stop_if={c.readiness.stop_if}; never: train anyway)")
        for key in ("chosen_temperature", "curriculum", "dynamic_sampling"):
            if key in report:
                print(f"readiness: {key.replace('_', ' ')} -> {report[key]}", file=sys.stderr, flush=True)
        return out


def ready_command(model: str, data: str, n: int, temperature: float, prompts: int, grid: list[float],
                  max_new_tokens: int, seed: int, device: str, dtype: str, thin_share: float = 0.25) -> dict:
    """`slide ready`: the check on a checkpoint folder and a task spec; prints the table, returns the report."""
    import torch
    from slide.device import generator, precision_for, resolve_device
    from slide.engine import DTYPES
    from slide.engine.inprocess import InProcessEngine
    from slide.errors import UserError
    from slide.eval.passk import verifiers
    from slide.model.load import load_with_tokenizer
    from slide.tasks import parse_task_specs
    if n < 2 or prompts < 1 or temperature <= 0 or max_new_tokens < 1 or any(t <= 0 for t in grid):
        raise UserError(f"slide ready: need --n >= 2, --prompts >= 1, --max-new-tokens >= 1 and temperatures > 0, got "
                        f"--n {n}, --prompts {prompts}, --max-new-tokens {max_new_tokens}, --temperature "
                        f"{temperature}, --grid {grid}")
    specs = parse_task_specs(data)  # an empty or unlabelled dataset stops here
    dev = resolve_device(device)
    net, tok = load_with_tokenizer(model, "checkpoint", DTYPES[precision_for(dtype, dev)], dev)
    torch.manual_seed(seed)
    report = check(InProcessEngine(net, tok.pad_token_id), tok, training_sample(specs, prompts, seed), verifiers(specs),
                   n, temperature, max_new_tokens, grid, thin_share, has_levels(specs), generator=generator(dev, seed))
    print_report(report)
    return report
