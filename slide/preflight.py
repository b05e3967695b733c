"""Check a run's inputs before anything is written: data specs parse, datasets load, checkpoints exist."""
from __future__ import annotations

from pathlib import Path

from slide.errors import UserError
from slide.tasks import parse_task_specs
from slide.tasks.user_reward import load_reward


def check_inputs(data_specs: list[str | None], model_init: str | None, reward: str | None = None) -> None:
    load_reward(reward)  # data.reward imports and names a function
    for spec in data_specs:
        if spec is not None:
            parse_task_specs(spec)  # raises UserError naming the file/row/item
    if model_init is not None:
        p = Path(model_init)
        if not p.is_dir():
            raise UserError(f"model.init {model_init!r}: no such checkpoint folder")
        if not (p / "config.json").is_file():
            raise UserError(f"model.init {model_init!r}: not a Hugging Face checkpoint (no config.json)")
