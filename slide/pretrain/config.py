"""The pre-training config (`slide pretrain`): stages, their data mixtures, one schedule, the optimizer split.
Typed like every other run config (slide/config.py: YAML + `key=value` overrides, one-line errors)."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slide.config import DEVICE_HELP, Device, ModelSpec, Section


class SourceSpec(Section):
    """One weighted source of a pre-training data mixture (slide/pretrain/streams.py)."""
    name: str = Field(..., min_length=1, description="label in metrics and summary.json (held-out loss per source)")
    path: str = Field(..., description="a .jsonl file (one JSON object a line), a .parquet file, a folder of text "
                                       "files (each file one document), or builtin:code|text|repo|reasoning|needle"
                                       "|copy (a miniature corpus built offline, slide/pretrain/corpora.py)")
    weight: float = Field(1.0, gt=0, description="relative share of the documents drawn")
    field: str = Field("text", description="the text field of a JSONL object / Parquet column")


class StageSpec(Section):
    """One data stage of the pre-/mid-training curriculum."""
    name: str = Field(..., min_length=1)
    mixture: list[SourceSpec] = Field(..., min_length=1)
    seq_len: int = Field(..., ge=16, description="packed row length (context) of this stage")
    tokens: int = Field(..., ge=1, description="token budget (row positions, padding included)")
    packing: Literal["truncate", "best-fit"] = Field(
        "truncate", description="truncate: documents fill rows back to back, cut at a row's end (pre-training); "
                                "best-fit: whole documents, best-fit decreasing, none split where it fits "
                                "(mid-training); both with document-boundary attention")
    rope_theta: float = Field(10000.0, gt=0, description="RoPE base for this stage (GLM: 1e4, then 1e6 at 32K)")


class ScheduleSpec(Section):
    """One learning-rate schedule over the tokens of all stages, and the batch-size warmup."""
    lr: float = Field(3e-3, gt=0, description="peak learning rate (AdamW's; Muon's update is RMS-matched to it)")
    min_lr_ratio: float = Field(0.1, ge=0, le=1, description="final lr / peak lr (GLM: 2.5e-5 / 2.5e-4)")
    warmup_tokens: int = Field(0, ge=0, description="linear warmup over this many tokens")
    decay: Literal["cosine", "wsd"] = Field("cosine", description="cosine: from the end of warmup to the last "
                                                                  "token; wsd: stable, then linear decay")
    wsd_decay_frac: float = Field(0.2, gt=0, le=1, description="wsd: share of all tokens spent decaying")
    batch_tokens: int = Field(4096, ge=16, description="tokens per optimizer step after the batch warmup")
    batch_start_tokens: int | None = Field(None, ge=16, description="batch size at the start (None: no warmup)")
    batch_warmup_tokens: int = Field(0, ge=0, description="tokens over which the batch grows to batch_tokens")


class PretrainEvalSpec(Section):
    held_out_docs: int = Field(8, ge=1, description="the first documents of each source, never trained on: "
                                                    "held-out loss per source at the end of each stage")
    needle_lengths: list[int] = Field([], description="context lengths (tokens) of the needle-retrieval eval")
    needle_samples: int = Field(20, ge=1, description="needle documents per context length")


class PretrainConfig(Section):
    name: str = "pretrain"
    out_dir: str = "runs"
    seed: int = 0
    model: ModelSpec = ModelSpec()
    stages: list[StageSpec] = Field(..., min_length=1)
    schedule: ScheduleSpec = ScheduleSpec()
    optimizer: Literal["muon", "adamw"] = Field(
        "muon", description="muon: torch.optim.Muon on the 2-D hidden matrices, AdamW on the rest "
                            "(slide/pretrain/optim.py); adamw: AdamW on everything")
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, gt=0)
    micro_batch_rows: int = Field(16, ge=1, description="rows per forward/backward (gradient accumulation)")
    save_every: int = Field(0, ge=0, description="checkpoint every N steps (0: at the end of each stage only)")
    corpora_dir: str = Field("runs/corpora", description="where builtin: corpora are built (once, then reused)")
    eval: PretrainEvalSpec = PretrainEvalSpec()
    threads: int = Field(0, ge=0)
    device: Device = Field("auto", description=DEVICE_HELP)
    precision: Literal["auto", "fp32", "bf16"] = Field("auto", description="bf16 = autocast, fp32 master weights")

    @model_validator(mode="after")
    def _names_unique(self):
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stages: names must be unique, got {names}")
        for i, s in enumerate(self.stages):
            sources = [m.name for m in s.mixture]
            if len(set(sources)) != len(sources):
                raise ValueError(f"stages.{i}.mixture: source names must be unique, got {sources}")
        return self
