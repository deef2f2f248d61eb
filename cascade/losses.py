"""Hierarchical self-distillation loss. Returns a dict of named terms the loop logs without knowing them."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["kd_loss", "hint_loss", "HintPlan", "member_loss", "member_weights", "cascade_loss"]


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """tau^2 * KL(softmax(teacher / tau) || softmax(student / tau)), batch mean; the teacher is detached."""
    t = F.log_softmax(teacher.detach().float() / tau, dim=1)
    s = F.log_softmax(student.float() / tau, dim=1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * tau * tau


def hint_loss(student: list[torch.Tensor], teacher: list[torch.Tensor],
              plans: list[HintPlan | None] | None = None) -> torch.Tensor:
    """Squared L2 distance between matching feature maps (summed over channels and positions, FitNets' hint),
    averaged over the batch and the layers; teachers detached.

    Why a sum, not a per-element mean: with the mean, the paper's lambda_H = 0.001 makes the hint about 1e-3 of
    the cross-entropy, i.e. no hint at all; summed over a (C, H, W) map it is of the order of the CE (VGG16's last
    conv maps on CIFAR hold 512 x 2 x 2 values). Masked members' features are full width (zeros where pruned) and
    compare directly. Exported members keep only some channels: ``plans[j]`` says which, and the distance is the
    full-width one without building it."""
    if not student:
        return torch.zeros(())
    plans = plans or [None] * len(student)
    return torch.stack([F.mse_loss(s.float(), t.detach().float(), reduction="sum") / s.shape[0] if p is None
                        else p.sq_distance(s, t.detach()) for s, t, p in zip(student, teacher, plans)]).mean()


class HintPlan:
    """The full-width squared distance between two physically pruned feature maps, from index tensors made once.

    ``s_kept``/``t_kept``: the full-width channel positions each side keeps (sorted, as export keeps them).
    distance = (sum over shared channels of (s - t)^2 + sum over student-only s^2 + teacher-only t^2) / batch."""

    def __init__(self, s_kept: torch.Tensor, t_kept: torch.Tensor, full: int, device: torch.device):
        s_kept, t_kept = s_kept.cpu().tolist(), t_kept.cpu().tolist()
        t_at = {c: j for j, c in enumerate(t_kept)}
        shared = [(i, t_at[c]) for i, c in enumerate(s_kept) if c in t_at]
        as_index = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        self.s_shared, self.t_shared = as_index([i for i, _ in shared]), as_index([j for _, j in shared])
        s_set = set(s_kept)
        self.s_only = as_index([i for i, c in enumerate(s_kept) if c not in t_at])
        self.t_only = as_index([j for j, c in enumerate(t_kept) if c not in s_set])
        self.full = full

    def sq_distance(self, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        s, t = s.float(), t.float()
        sq = (s.index_select(1, self.s_shared) - t.index_select(1, self.t_shared)).pow(2).sum()
        sq = sq + s.index_select(1, self.s_only).pow(2).sum() + t.index_select(1, self.t_only).pow(2).sum()
        return sq / s.shape[0]


def member_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float,
                lambda_kd: float, lambda_h: float, feats: list[torch.Tensor] | None = None,
                teacher_feats: list[torch.Tensor] | None = None,
                plans: list[HintPlan | None] | None = None) -> dict[str, torch.Tensor]:
    """L = CE + lambda_KD * tau^2 * KL + lambda_H * hints for one member and its teacher."""
    ce = F.cross_entropy(logits.float(), labels)
    kd = kd_loss(logits, teacher_logits, tau)
    terms = {"ce": ce, "kd": kd}
    total = ce + lambda_kd * kd
    if lambda_h > 0 and feats:
        terms["hint"] = hint_loss(feats, teacher_feats or [], plans)
        total = total + lambda_h * terms["hint"]
    terms["loss"] = total
    return terms


def member_weights(n: int, student_weight: float | None = None) -> list[float]:
    """Each member's weight in the joint loss, summing to 1, so the shared weights' step does not grow with N.

    ``student_weight`` None: 1/N each. Else the student gets that share and the N - 1 TAs split the rest."""
    if n == 1 or student_weight is None:
        return [1.0 / n] * n
    return [student_weight] + [(1.0 - student_weight) / (n - 1)] * (n - 1)


def cascade_loss(logits: list[torch.Tensor], labels: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float,
                 lambda_kd: float, lambda_h: float, feats: list[list[torch.Tensor]] | None = None,
                 teacher_feats: list[torch.Tensor] | None = None,
                 weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    """sum_i w_i L_i over members; member i's teacher is member i+1, the top member's the frozen model.

    ``weights`` (default 1/N each, ``member_weights``) keep the shared weights' step size independent of the
    member count: every member's loss reaches the shared convs. A member's own parameters see only its own
    loss, so w_i scales them down too; the trainer divides their gradient by w_i again (``own_grads: full``).
    Returns ``loss`` and per-member terms ``m{i}/ce``, ``m{i}/kd``, ``m{i}/hint``, ``m{i}/loss``.
    """
    n = len(logits)
    w = weights if weights is not None else member_weights(n)  # Python floats: no tensor made per step
    out: dict[str, torch.Tensor] = {}
    losses = []
    for i in range(n):
        t_logits = logits[i + 1] if i + 1 < n else teacher_logits
        t_feats = (feats[i + 1] if i + 1 < n else teacher_feats) if feats else None
        terms = member_loss(logits[i], labels, t_logits, tau=tau, lambda_kd=lambda_kd, lambda_h=lambda_h,
                            feats=feats[i] if feats else None, teacher_feats=t_feats)
        out.update({f"m{i}/{k}": v.detach() for k, v in terms.items()})
        losses.append(terms["loss"])
    # stacked: a new tensor, never an alias of m0/loss (which torch.compile mishandles)
    out["loss"] = torch.stack([wi * loss for wi, loss in zip(w, losses)]).sum()
    return out
