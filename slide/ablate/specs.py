"""The five GLM-4.5 RL lessons as ablations, and the importance corrections (GLM-5, AReaL): what each compares, on
which data, and what the paper found.

Every ablation starts all its arms from the same cold-start checkpoint (test-size tiny GLM, SFT on
arithmetic:1-4 stopped at ~30% held-out pass@1) and its arms differ in exactly their overrides.
Nothing here is tuned to make an arm win: the shared settings are the project's RL defaults at a
size that fits ~20 minutes on 2 cores.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from slide.datatools import synth_rows, write_rows


@dataclass(frozen=True)
class Ablation:
    name: str
    finding: str  # the paper's claim, in one line
    expected: str  # the arm the paper says wins
    arms: dict[str, list[str]]  # arm label -> `slide rl` overrides
    common: list[str] = field(default_factory=list)  # overrides shared by every arm
    side_metric: str = "reward_mean"  # second panel of the plot (from metrics.jsonl)
    steps: int = 40

    def prepare(self, data_dir: Path, quick: bool) -> None:
        """Build the files the arms' overrides name (data-quality only)."""


@dataclass(frozen=True)
class DataQuality(Ablation):
    small: int = 400
    large: int = 2000
    wrong_share: float = 0.4

    def prepare(self, data_dir: Path, quick: bool) -> None:
        data_dir.mkdir(parents=True, exist_ok=True)
        # the large set's correct rows and the small set are drawn from different seeds, so they overlap only by chance
        small, large = (20, 100) if quick else (self.small, self.large)
        write_rows(synth_rows("arithmetic:1-4", small, wrong_share=0.0, seed=1), str(data_dir / "small_verified.jsonl"))
        write_rows(synth_rows("arithmetic:1-4", large, wrong_share=self.wrong_share, seed=2),
                   str(data_dir / "large_mixed.jsonl"))


BASE_TASK = "arithmetic:1-4"
RL_COMMON = ["rollout.prompts_per_step=8", "rollout.n=8", "rollout.max_new_tokens=96", "train.lr=1e-4",
             "train.micro_batch=64", "eval_every=5", "save_every=10", "data.eval_prompts=100", "threads=1"]

ABLATIONS = {a.name: a for a in [
    Ablation(
        "token-mean",
        finding="token-weighted mean loss beats sequence-mean: faster, more stable, less length bias (code RL)",
        expected="token-mean",
        arms={"token-mean": ["algo.loss_agg=token-mean"], "seq-mean": ["algo.loss_agg=seq-mean-token-mean"]},
        common=[f"data.train={BASE_TASK}"], side_metric="response_len_mean", steps=60),
    Ablation(
        "single-stage",
        finding="single-stage RL at the full output length beats growing the limit in stages "
                "(short stages make the model unlearn long outputs)",
        expected="single-stage",
        arms={"single-stage": [], "staged": ["rollout.length_stages=[[1,40],[14,64],[27,96]]"]},
        common=["data.train=arithmetic:2-4"], side_metric="truncated_frac"),
    Ablation(
        "curriculum",
        finding="a two-stage difficulty curriculum (moderate, then pass@small = 0 < pass@large) beats uniform sampling",
        expected="two-stage",
        arms={"uniform": [], "two-stage": ["curriculum.mode=two-stage", "curriculum.stage2_step=21",
                                           "curriculum.pool=128", "curriculum.k_small=8", "curriculum.k_large=32"]},
        common=["data.train=arithmetic:1-5", "data.eval=arithmetic:3-5"], side_metric="level_mean"),
    DataQuality(
        "data-quality",
        finding="a small verified set beats a large mixed-quality one (science RL)",
        expected="small-verified",
        arms={"small-verified": ["data.train={data}/small_verified.jsonl"],
              "large-mixed": ["data.train={data}/large_mixed.jsonl"]},
        common=[f"data.eval={BASE_TASK}"], side_metric="reward_mean"),
    Ablation(
        "temperature",
        finding="raising the sampling temperature on a reward plateau (highest within 1% of the best held-out "
                "score) beats a fixed temperature",
        expected="dynamic",
        arms={"fixed": [], "dynamic": ["temperature.dynamic=true", "temperature.window=5",
                                       "temperature.eval_prompts=48", "temperature.eval_k=4"]},
        common=[f"data.train={BASE_TASK}"], side_metric="temperature"),
    Ablation(
        "importance",
        finding="with bf16 rollout of an MoE, GLM-5 masks the tokens whose engine/trainer ratio leaves [1/2, 2] "
                "(IcePop) rather than capping the weight (TIS); AReaL clips against a proximal policy",
        expected="mis",
        # two updates per step in every arm, so decoupled's clip against the proximal policy has work to do
        arms={"tis": ["algo.importance=tis"], "mis": ["algo.importance=mis"],
              "decoupled": ["algo.importance=decoupled"], "none": ["algo.importance=none"]},
        common=[f"data.train={BASE_TASK}", "rollout.precision=bf16", "train.updates_per_step=2"],
        side_metric="logprob_gap_mean"),
]}
