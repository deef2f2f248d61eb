"""Hierarchical self-distillation loss. Returns a dict of named terms the loop logs without knowing them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss", "hint_loss", "member_loss", "cascade_loss"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), batch mean; the teacher is detached."""
    t = F.log_softmax(teacher.detach().float() / tau, dim=1)
    s = F.log_softmax(student.float() / tau, dim=1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * tau * tau


def hint_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean squared error between matching feature maps, averaged over layers; teachers detached."""
    if not student:
        return torch.zeros(())
    return torch.stack([F.mse_loss(s.float(), t.detach().float()) for s, t in zip(student, teacher)]).mean()


def member_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float,
                lambda_kd: float, lambda_h: float, feats: list[torch.Tensor] | None = None,
                teacher_feats: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """L = CE + lambda_KD * tau^2 * KL + lambda_H * hints for one member and its teacher."""
    ce = F.cross_entropy(logits.float(), labels)
    kd = kd_loss(logits, teacher_logits, tau)
    terms = {"ce": ce, "kd": kd}
    total = ce + lambda_kd * kd
    if lambda_h > 0 and feats:
        terms["hint"] = hint_loss(feats, teacher_feats or [])
        total = total + lambda_h * terms["hint"]
    terms["loss"] = total
    return terms


def cascade_loss(logits: list[torch.Tensor], labels: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float,
                 lambda_kd: float, lambda_h: float, feats: list[list[torch.Tensor]] | None = None,
                 teacher_feats: list[torch.Tensor] | None = None, reduction: str = "mean") -> dict[str, torch.Tensor]:
    """Sum (or mean) over members of L_i; member i's teacher is member i+1, the top member's the frozen model.

    ``reduction="mean"`` (default) keeps the shared weights' step size independent of the member count:
    every member's loss reaches the shared convs, so a sum would scale their gradient by about N.
    Returns ``loss`` and per-member terms ``m{i}/ce``, ``m{i}/kd``, ``m{i}/hint``, ``m{i}/loss``.
    """
    n = len(logits)
    out: dict[str, torch.Tensor] = {}
    total = 0.0
    for i in range(n):
        t_logits = logits[i + 1] if i + 1 < n else teacher_logits
        t_feats = (feats[i + 1] if i + 1 < n else teacher_feats) if feats else None
        terms = member_loss(logits[i], labels, t_logits, tau=tau, lambda_kd=lambda_kd, lambda_h=lambda_h,
                            feats=feats[i] if feats else None, teacher_feats=t_feats)
        out.update({f"m{i}/{k}": v.detach() for k, v in terms.items()})
        total = total + terms["loss"]
    out["loss"] = total / n if reduction == "mean" else total
    return out
