"""The optimizer split of GLM-4.5's pre-training: Muon for the hidden matrices, AdamW for everything else.

    torch.optim.Muon (momentum 0.95, Nesterov, 5 Newton-Schulz steps, adjust_lr_fn="match_rms_adamw": the update
    is scaled to RMS 0.2 * sqrt(max(A, B)) * lr, Moonshot's rule and GLM's "update RMS 0.2", so one learning rate
    serves both optimizers) takes every 2-D weight matrix inside the transformer blocks: attention q/k/v/o, the
    dense MLP, the shared experts.
    AdamW takes the rest: the input embeddings and the output head (not hidden matrices: a lookup table and a
    classifier), norms and biases (1-D), the MoE routers (their scores set which experts a token uses; Muon's
    orthogonalised step would treat them as a hidden transform), and the fused routed-expert stacks
    ([experts, out, in], 3-D: torch.optim.Muon takes 2-D parameters only).
Weight decay on matrices (AdamW's embeddings, head, routers, expert stacks; all of Muon's), none on norms and biases.
"""
from __future__ import annotations

import torch

from slide.model.tiny import routers


def split(model) -> tuple[dict[str, torch.nn.Parameter], dict[str, torch.nn.Parameter]]:
    """(Muon's, AdamW's) trainable parameters by name."""
    special = {id(model.get_input_embeddings().weight)}
    head = model.get_output_embeddings()
    if head is not None:
        special.add(id(head.weight))
    special |= {id(g.weight) for g in routers(model)}
    muon, adamw = {}, {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (muon if p.ndim == 2 and id(p) not in special else adamw)[name] = p
    return muon, adamw


class Optimizers:
    """Muon + AdamW (or AdamW alone) stepped together under one learning rate."""

    def __init__(self, model, kind: str, lr: float, weight_decay: float, betas: tuple[float, float]):
        muon, adamw = split(model)
        if kind == "adamw":
            muon, adamw = {}, {**muon, **adamw}
        decay = [p for p in adamw.values() if p.ndim >= 2]
        no_decay = [p for p in adamw.values() if p.ndim < 2]
        self.opts = [torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                        {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=betas)]
        if muon:
            self.opts.append(torch.optim.Muon(list(muon.values()), lr=lr, weight_decay=weight_decay, momentum=0.95,
                                              adjust_lr_fn="match_rms_adamw"))
        self.counts = {"muon_params": sum(p.numel() for p in muon.values()),
                       "adamw_params": sum(p.numel() for p in adamw.values())}

    def set_lr(self, lr: float) -> None:
        for o in self.opts:
            for g in o.param_groups:
                g["lr"] = lr

    def zero_grad(self) -> None:
        for o in self.opts:
            o.zero_grad(set_to_none=True)

    def step(self) -> None:
        for o in self.opts:
            o.step()

    def state_dict(self) -> list[dict]:
        return [o.state_dict() for o in self.opts]

    def load_state_dict(self, states: list[dict]) -> None:
        for o, s in zip(self.opts, states):
            o.load_state_dict(s)
