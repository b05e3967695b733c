"""A user's reward function for the rows of their JSONL/Parquet datasets: `data.reward: MODULE:FUNCTION`.

    # myreward.py, next to where `slide rl` runs (or anywhere on PYTHONPATH)
    def score(problem, response: str) -> float:      # reward in [0, 1]
        return float(problem.meta["unit"] in response and problem.answer in response)

    slide rl cfg.yaml data.train=data/rows.jsonl data.reward=myreward:score

`problem` is the row as a slide.tasks.Problem (prompt, answer, level; every other field of the row in
`problem.meta`); `response` is the model's whole response text, reasoning included
(slide.tasks.final_answer strips it). The function runs in the call pool's worker processes like every
verifier (slide/rl/reward.py): one that raises, returns a non-number or overruns rollout.reward_timeout_s
scores 0 and is counted, never stalls the run. Built-in families keep their own verifiers.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from slide.errors import UserError


def load_reward(spec: str | None) -> Callable | None:
    """The callable `spec` names (None for None); a UserError naming data.reward if it cannot be loaded."""
    if spec is None:
        return None
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise UserError(f"data.reward {spec!r}: expected MODULE:FUNCTION, e.g. myreward:score")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # a module next to where the command runs, as `python -m` would find it
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"data.reward {spec!r}: cannot import module {module!r} ({e})") from None
    except Exception as e:  # noqa: BLE001 - the user's module raised on import
        raise UserError(f"data.reward {spec!r}: importing {module!r} raised {type(e).__name__}: {e}") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise UserError(f"data.reward {spec!r}: {module!r} has no function {name!r}")
    return fn
