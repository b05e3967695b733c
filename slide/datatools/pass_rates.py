"""Measure each prompt with a model: k samples -> pass rate, pass@j, mean response length.

    slide data measure in.jsonl out.jsonl --model runs/sft/final --k 8 --temperature 1.0

From Python (e.g. offline difficulty estimation before a curriculum stage):

    stats = measure(engine, tokenizer, problems, verify, k=8, temperature=1.0, max_new_tokens=96,
                    generator=torch.Generator().manual_seed(0))
    stats[i]["pass_rate"]          # problem i: share of its 8 samples the verifier scored 1

Prompts are built and responses verified exactly as in slide.eval.passk.evaluate (same chat template,
same stop tokens, same `Rollout`, rewards bounded by `timeout_s`), so a pass rate here is the pass@1
`slide eval` would report for that prompt at the same temperature. Agentic problems run whole episodes.
"""
from __future__ import annotations

from typing import Callable

from slide.config import AgentSpec
from slide.engine.inprocess import SamplingParams
from slide.eval.passk import pass_at_k
from slide.model.tokenizer import stop_token_ids
from slide.rl.reward import RewardRunner, by_family
from slide.rl.rollout import Rollout
from slide.tasks.base import Problem

# Fields `measure` writes (plus "pass@J" for J = 2, 4, 8, ... below k, and k itself).
MEASURED_FIELDS = ("samples", "correct", "pass_rate", "response_len_mean", "truncated_rate")


def pass_at_levels(k: int) -> list[int]:
    """The j of the pass@j fields for k samples: powers of two from 2 below k, then k (k = 1 gives [1])."""
    levels, j = [], 2
    while j < k:
        levels.append(j)
        j *= 2
    return levels + [k]


def group_stats(rewards: list[float], lengths: list[int], truncated: list[bool]) -> dict:
    """Statistics of one prompt's k samples (one reward, response length in tokens, truncation flag each).

    A sample is correct iff its reward is >= 1 (as in `slide eval`). pass@j is the unbiased estimate
    from k samples (Chen et al. 2021); pass@k is 1 iff any sample is correct.
    """
    k = len(rewards)
    correct = sum(r >= 1.0 for r in rewards)
    stats = {"samples": k, "correct": correct, "pass_rate": correct / k}
    stats.update({f"pass@{j}": pass_at_k(k, correct, j) for j in pass_at_levels(k)})
    stats["response_len_mean"] = sum(lengths) / k
    stats["truncated_rate"] = sum(truncated) / k
    return stats


def measure(engine, tokenizer, problems: list[Problem], verify: dict, k: int, temperature: float = 1.0,
            max_new_tokens: int = 96, generator=None, prompts_per_batch: int = 64, thinking: bool = True,
            timeout_s: float = 5.0, agent: AgentSpec = AgentSpec(),
            progress: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Sample `k` responses per problem and verify them; one `group_stats` dict per problem, in order.

    engine: anything with `generate(prompt_ids, SamplingParams, n, generator) -> [[Completion]]` (an
      InProcessEngine); tokenizer: the model's (slide.model.tokenizer.load_tokenizer).
    verify: family -> verify(problem, response) -> reward in [0, 1], for every problem's family
      (slide.eval.passk.verifiers(specs) for task specs, slide.datatools.row_verifiers() for dataset rows).
    temperature: 0 decodes greedily (then k > 1 repeats one answer). generator: a torch.Generator for
      reproducible sampling. prompts_per_batch problems (times k samples) go to the engine at once.
    progress(done, {"pass_rate": mean so far}) is called after each batch.
    A verifier that raises or overruns `timeout_s` scores 0 (slide.rl.reward), never stops the measurement.
    """
    if k < 1 or prompts_per_batch < 1 or max_new_tokens < 1 or temperature < 0:
        raise ValueError(f"measure: need k, prompts_per_batch, max_new_tokens >= 1 and temperature >= 0, got "
                         f"k={k}, prompts_per_batch={prompts_per_batch}, max_new_tokens={max_new_tokens}, "
                         f"temperature={temperature}")
    missing = sorted({p.family for p in problems} - set(verify))
    if missing:
        raise ValueError(f"measure: no verifier for families {missing} (verify has {sorted(verify)})")
    params = SamplingParams(temperature=temperature, max_new_tokens=max_new_tokens,
                            stop_token_ids=tuple(stop_token_ids(tokenizer)))
    reward = RewardRunner(by_family(verify), timeout_s)
    rollout = Rollout(engine, tokenizer, params, k, reward, thinking, agent)
    out: list[dict] = []
    for start in range(0, len(problems), prompts_per_batch):
        for group in rollout.groups(problems[start:start + prompts_per_batch], generator=generator):
            out.append(group_stats([s.reward for s in group], [len(s.response_ids) for s in group],
                                   [s.status == "truncated" for s in group]))
        if progress is not None:
            progress(len(out), {"pass_rate": sum(s["pass_rate"] for s in out) / len(out)})
    return out


def with_measurements(row: dict, stats: dict) -> dict:
    """`row` with `stats` merged in; measured fields of an earlier measurement are dropped first, so
    re-measuring with another k leaves no stale pass@j behind."""
    kept = {key: v for key, v in row.items() if key not in MEASURED_FIELDS and not key.startswith("pass@")}
    return {**kept, **stats}
