"""The run directory: nothing lost, everything resumable.

    runs/NAME/config.yaml        resolved config (never rewritten on resume)
    runs/NAME/metrics.jsonl      one JSON object per step (+ TensorBoard events in tb/)
    runs/NAME/trajectories.jsonl every sampled trajectory (prompt, response, reward, version, status)
    runs/NAME/eval.jsonl         periodic held-out evaluations
    runs/NAME/groups.jsonl       async mode: what became of each finished group (trained, stale, no_signal)
    runs/NAME/groups/            async mode: finished groups no checkpoint has consumed yet (slide/rl/group_store.py)
    runs/NAME/checkpoints/step_000010/{model/ (HF folder), state.pt}   (+ adapter/ with LoRA)

Checkpoints are written to a temporary folder and renamed, so a kill -9 mid-save leaves the previous
one intact. On resume, rows logged after the checkpoint are dropped so the continued run's files are
exactly those of a run never stopped.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from slide.errors import UserError
from slide.model.lora import has_lora, save_adapter, save_merged

CKPT_PREFIX = "step_"


class NullWriter:
    def add_scalar(self, *a, **k): ...
    def flush(self): ...
    def close(self): ...


def rng_state() -> dict:
    """Every global random stream; the CUDA generators too once this process has used CUDA (never initialised on
    a CPU run, so its checkpoints are what they always were)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()  # one CPU byte tensor per GPU
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():  # a GPU run resumed on a GPU machine
        for index, cuda in enumerate(state["cuda"][:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda, index)


class RunDir:
    def __init__(self, path: Path, tensorboard: bool = True, purge_step: int | None = None):
        self.path = path
        self.ckpt_dir = path / "checkpoints"
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.tb = SummaryWriter(str(path / "tb"), purge_step=purge_step)
        else:
            self.tb = NullWriter()

    @classmethod
    def create(cls, out_dir: str, name: str, config_yaml: str, **kw) -> "RunDir":
        """A new run folder; refuses to touch an existing non-empty one."""
        path = Path(out_dir) / name
        if path.exists() and any(path.iterdir()):
            raise UserError(f"run directory {str(path)!r} already exists; pass --resume {path} to continue it, "
                            f"or choose another name=...")
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.yaml").write_text(config_yaml)
        return cls(path, **kw)

    @classmethod
    def open(cls, path: str) -> tuple["RunDir", Path | None]:
        """An existing run and its latest complete checkpoint (None if it has none)."""
        p = cls.config_of(path).parent
        ckpt = latest_checkpoint(p / "checkpoints")
        step = int(ckpt.name[len(CKPT_PREFIX):]) if ckpt else 0
        run = cls(p, purge_step=step + 1)
        run.truncate_after(step)
        return run, ckpt

    @staticmethod
    def config_of(path: str) -> Path:
        """The config.yaml of the run at `path` (read before `open` touches the run: its device may be missing)."""
        config = Path(path) / "config.yaml"
        if not config.is_file():
            raise UserError(f"--resume {path!r}: not a run directory (no config.yaml)")
        return config

    # -- logs ---------------------------------------------------------------------------------
    def _append(self, name: str, rows: list[dict]) -> None:
        with open(self.path / name, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def log_metrics(self, step: int, metrics: dict) -> None:
        self._append("metrics.jsonl", [{"step": step, **metrics}])
        for k, v in metrics.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(k, v, step)
        self.tb.flush()

    def log_trajectories(self, rows: list[dict]) -> None:
        self._append("trajectories.jsonl", rows)

    def log_groups(self, rows: list[dict]) -> None:
        self._append("groups.jsonl", rows)

    def log_eval(self, step: int, result: dict) -> None:
        self._append("eval.jsonl", [{"step": step, **result}])
        for k, v in result.get("summary", {}).items():
            self.tb.add_scalar(f"eval/{k}", v, step)

    def truncate_after(self, step: int) -> None:
        """Drop rows written after step `step`'s checkpoint from every log: rows with step > `step`, and eval rows
        logged at a later step (`logged_at`: async mode's background evals score version `step` and arrive later)."""
        for name in ("metrics.jsonl", "trajectories.jsonl", "eval.jsonl", "groups.jsonl"):
            f = self.path / name
            if not f.exists():
                continue
            keep = []
            for line in f.read_text().splitlines():
                try:
                    row = json.loads(line)
                    if max(row["step"], row.get("logged_at", 0)) <= step:
                        keep.append(line)
                except (json.JSONDecodeError, KeyError):
                    break  # a torn last line from a kill mid-write
            tmp = f.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in keep))
            tmp.replace(f)

    # -- checkpoints --------------------------------------------------------------------------
    def save_checkpoint(self, step: int, model, tokenizer, state: dict, keep: int = 3, merged: bool = True) -> Path:
        """`model/` (an HF folder) and `state.pt`; a LoRA policy writes `adapter/` (what resume reads) and `model/`,
        its merged weights, only when `merged`."""
        def write(folder: Path) -> dict:
            if has_lora(model):
                save_adapter(model, folder / "adapter", tokenizer)
            if merged or not has_lora(model):
                save_merged(model, folder / "model")
            return {}
        return self.write_checkpoint(step, write, tokenizer if merged or not has_lora(model) else None, state, keep)

    def write_checkpoint(self, step: int, write, tokenizer, state: dict, keep: int = 3) -> Path:
        """Checkpoint `step` atomically: `write(folder)` puts the weights (and whatever else) into a temporary
        folder and returns more state; the tokenizer joins `model/`, then `state.pt`, then the folder takes its
        final name. Only the newest `keep` checkpoints stay."""
        def fill(tmp: Path) -> None:
            more = write(tmp)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / "model")
            torch.save({"step": step, "rng": rng_state(), **state, **more}, tmp / "state.pt")
        final = _atomic_folder(self.ckpt_dir / f"{CKPT_PREFIX}{step:06d}", fill)
        for old in sorted(self.ckpt_dir.glob(f"{CKPT_PREFIX}*"))[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def save_final(self, model, tokenizer, name: str = "final") -> Path:
        """The run's model as an HF folder `name/` (a LoRA policy: its merged weights), written atomically: a kill
        mid-save never leaves a partial folder that reads as a finished run."""
        def fill(tmp: Path) -> None:
            save_merged(model, tmp)
            tokenizer.save_pretrained(tmp)
        return _atomic_folder(self.path / name, fill)

    def close(self) -> None:
        self.tb.close()


def _atomic_folder(final: Path, fill) -> Path:
    """`fill(folder)` writes into `.tmp-<name>` beside `final`, which then takes its name (replacing an older one):
    a kill at any point leaves either the old folder or the new one whole, never a partial one under that name."""
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob(f"{CKPT_PREFIX}*") if (p / "state.pt").is_file())
    return done[-1] if done else None


def load_state(ckpt: Path) -> dict:
    try:
        return torch.load(ckpt / "state.pt", weights_only=False, map_location="cpu")  # a GPU run's, on any machine
    except Exception as e:
        raise UserError(f"checkpoint {str(ckpt)!r}: state.pt unreadable ({type(e).__name__})") from None
