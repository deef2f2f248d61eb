"""``CascadeNet``: one CNN run as N members (student first) that share its convolution weights.

Every member owns its stem (first conv), BatchNorms, head (last linear) and filter scores. The wrapped
model's BatchNorms, stem and head are swapped for ``Memberwise`` modules that split the (N*B) batch into
N chunks, one per member; everything else (shared convs, activations, pooling, residual additions) is
batch-independent, so one forward pass over the N*B batch computes all members and every shared conv
runs as one call.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch_pruning as tp

from .budget import BUDGETS, CostModel, budget_masks
from .flops import trace_layers
from .masks import global_topk_masks, keep_count, route_to_teacher, straight_through

__all__ = ["CascadeNet", "Memberwise", "MemberBN", "validate_cascade", "SCORE_INITS"]

SCORE_INITS = ("rank", "l1", "random")


class Memberwise(nn.Module):
    """N copies of a module; chunk i of the (N*B, ...) batch goes through copy i."""

    def __init__(self, module: nn.Module, n: int):
        super().__init__()
        self.copies = nn.ModuleList(copy.deepcopy(module) for _ in range(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(c) for m, c in zip(self.copies, x.chunk(len(self.copies)))])


class MemberBN(Memberwise):
    """Per-member BatchNorm followed by the member's channel mask.

    The mask multiplies the BN *output*, so a masked channel is exactly zero (its BN shift cannot leak)
    and the masked member computes what the physically pruned network computes.
    """

    mask: torch.Tensor | None = None  # (N, C), set by CascadeNet before each forward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)  # (N*B, C, H, W)
        if self.mask is None:
            return y
        n, c = self.mask.shape
        m = self.mask.to(y.dtype).view(n, 1, c, *([1] * (y.dim() - 2)))
        return (y.unflatten(0, (n, -1)) * m).flatten(0, 1)


class _ReluPassZero(torch.autograd.Function):
    """relu(x), whose backward lets the gradient through at x == 0 (a valid subgradient)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x >= 0).to(grad.dtype)


class ReLUPassZero(nn.ReLU):
    """The members' ReLU. A masked channel is exactly 0, and torch's relu'(0) = 0 would cut its mask off
    from any gradient; passing it at 0 gives the straight-through gradient the method needs
    (sum of dL/dY_n * unmasked output_n), so a pruned filter can come back. Same forward as nn.ReLU."""

    def forward(self, x):
        return _ReluPassZero.apply(x)


@dataclass
class PruneGroup:
    """Coupled channels that are removed together, with one score/mask entry per channel."""
    root: str                                # name of the conv whose output channels index the group
    size: int                                # channels in the group
    bns: list[tuple[str, list[int]]]         # (BatchNorm name, root index of each of its channels)
    layers: list[tuple[str, str, list[int]]] = field(default_factory=list)  # (conv/linear, "in"|"out", root idx per position)


def validate_cascade(ratios: list[float], *, budget: str, score_init: str, round_to: int) -> None:
    """CascadeNet's options; raises ValueError("<option>: why"), from which the config names its field.

    Ratios (the fraction each member removes), student first: each in [0, 1), strictly decreasing.
    """
    if budget not in BUDGETS:
        raise ValueError(f"budget: expected one of {', '.join(BUDGETS)}, got {budget!r}")
    if score_init not in SCORE_INITS:
        raise ValueError(f"score_init: expected one of {', '.join(SCORE_INITS)}, got {score_init!r}")
    if round_to < 1:
        raise ValueError(f"round_to: expected >= 1, got {round_to}")
    if not ratios:
        raise ValueError("ratios: at least one member (the student) is needed")
    for i, k in enumerate(ratios):
        if not isinstance(k, (int, float)) or not 0.0 <= float(k) < 1.0:
            raise ValueError(f"ratios[{i}]: expected a number in [0, 1), got {k!r}")
    for i in range(1, len(ratios)):
        if not ratios[i] < ratios[i - 1]:
            raise ValueError(f"ratios[{i}]: member ratios must decrease strictly from the student's, got {ratios}")


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def find_groups(model: nn.Module, example_input: torch.Tensor, ignored: list[str]) -> list[PruneGroup]:
    """Prunable channel groups from Torch-Pruning's dependency graph.

    A group is kept only if every conv whose outputs it removes is followed by a BatchNorm in the group
    (the mask sits after BN). Groups coupled with an ignored layer (stem, head) are skipped.
    """
    names = {m: n for n, m in model.named_modules()}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    groups = []
    for group in dg.get_all_groups(ignored_layers=[model.get_submodule(n) for n in ignored],
                                   root_module_types=[nn.Conv2d]):
        root = group[0].dep.target.module
        convs, bns, layers = set(), {}, {}
        for item in group.items:
            mod, fn = item.dep.target.module, item.dep.handler
            roots = [r for _, r in sorted(zip(item.idxs, item.root_idxs))]  # target position -> root channel
            if isinstance(mod, nn.BatchNorm2d):
                bns[names[mod]] = roots
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                out = dg.is_out_channel_pruning_fn(fn)
                layers[(names[mod], "out" if out else "in")] = roots
                if out and isinstance(mod, nn.Conv2d):
                    convs.add(mod)
        if bns and len(bns) >= len(convs):
            groups.append(PruneGroup(names[root], root.out_channels, sorted(bns.items()),
                                     [(n, d, r) for (n, d), r in layers.items()]))
    return groups


class CascadeNet(nn.Module):
    """A hierarchy of members T_0 (student) ... T_{N-1} over one model's shared conv weights.

    ``ratios[i]`` is the fraction of prunable filters member i removes (student first, strictly
    decreasing). ``forward(x)`` returns one logits tensor per member, student first.
    """

    def __init__(self, model: nn.Module, ratios: list[float], example_input: torch.Tensor, *,
                 score_init: str = "rank", hint_layers: int = 3, route_scores: bool = True, budget: str = "flops",
                 round_to: int = 1):
        super().__init__()
        validate_cascade(list(ratios), budget=budget, score_init=score_init, round_to=round_to)
        self.budget = budget
        self.round_to = int(round_to)  # each group keeps a multiple of this many channels (hardware-friendly)
        self.ratios = [float(k) for k in ratios]
        self.n = len(ratios)
        self.input_size = tuple(example_input.shape[1:])
        body = copy.deepcopy(model).cpu().eval()
        example_input = example_input[:1].cpu()
        order = [name for name, _, _ in trace_layers(body, example_input)]
        self.stem_name, self.head_name = order[0], order[-1]  # the stem is never masked nor shared
        with torch.enable_grad():
            self.groups = find_groups(body, example_input, ignored=[self.stem_name, self.head_name])
        if not self.groups:
            raise ValueError("this model has no prunable channel group (conv followed by BatchNorm)")
        self.total_filters = sum(g.size for g in self.groups)
        self.keep = [keep_count(k, self.total_filters, min_keep=len(self.groups)) for k in self.ratios]
        # Budgets in FLOPs/params: the exact cost of a masked member, and each member's target.
        self.cost_model = CostModel.build(body, example_input, self.groups)
        self.base_cost = self.cost_model.cost([torch.ones(g.size) for g in self.groups])
        idx = 1 if budget == "params" else 0
        self.targets = [(1 - k) * self.base_cost[idx] for k in self.ratios]

        # Scores: one (N, C_g) tensor per group. "rank" (default): each filter's L1-norm rank within its
        # layer, in (0, 1], so one global threshold starts as uniform per-layer L1 pruning (a strong start:
        # see BENCHMARKS.md) and training moves filters across layers from there. "l1": the L1 norm / the
        # layer's largest (a global threshold then prunes layers very unevenly). "random": ablation.
        scores = []
        for g in self.groups:
            l1 = body.get_submodule(g.root).weight.detach().abs().flatten(1).sum(1)  # (C_g,)
            if score_init == "rank":
                s = (l1.argsort().argsort().float() + 1) / g.size
            elif score_init == "l1":
                s = l1 / l1.max().clamp_min(1e-12)
            else:  # "random"
                s = torch.rand(g.size, generator=torch.Generator().manual_seed(len(scores)))
            scores.append(nn.Parameter(s.float().repeat(self.n, 1)))
        self.scores = nn.ParameterList(scores)
        # The cascaded update (off only for ablations: every member then follows its own gradient).
        self.route_scores = route_scores
        for p in self.scores:
            p.register_hook(lambda grad: route_to_teacher(grad) if self.route_scores else grad)

        for name, m in list(body.named_modules()):
            if type(m) is nn.ReLU:
                _set_module(body, name, ReLUPassZero(inplace=m.inplace))
            elif isinstance(m, nn.BatchNorm2d):
                _set_module(body, name, MemberBN(m, self.n))
            elif name in (self.stem_name, self.head_name):
                _set_module(body, name, Memberwise(m, self.n))
        self.body = body
        # (module, group index, root index of each BN channel)
        self._masked = [(body.get_submodule(bn), gi, torch.tensor(idx))
                        for gi, g in enumerate(self.groups) for bn, idx in g.bns]
        masked_names = [bn for g in self.groups for bn, _ in g.bns]
        bn_order = [n for n, m in body.named_modules() if isinstance(m, MemberBN) and n in masked_names]
        self.hint_names = bn_order[-hint_layers:] if hint_layers > 0 else []

    # ------------------------------------------------------------------ masks
    def hard_masks(self) -> list[torch.Tensor]:
        """Binary masks, one (N, C_g) tensor per group. Member i keeps exactly ``self.keep[i]`` filters
        (budget 'filters'), or the most filters whose FLOPs/params are at most ``self.targets[i]``."""
        if self.budget == "filters":
            per_member = [global_topk_masks([s[i] for s in self.scores], self.keep[i], self.round_to)
                          for i in range(self.n)]
        else:
            per_member = [budget_masks([s[i].detach().cpu() for s in self.scores], self.cost_model, self.targets[i],
                                       self.budget, self.round_to) for i in range(self.n)]
        return [torch.stack([per_member[i][g] for i in range(self.n)]).to(self.scores[g].device)
                for g in range(len(self.groups))]

    def _apply_masks(self, masks: list[torch.Tensor] | None) -> None:
        for bn, gi, idx in self._masked:
            bn.mask = None if masks is None else masks[gi][:, idx.to(masks[gi].device)]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *, with_features: bool = False):
        """x: (B, C, H, W) -> list of N logits (B, K), student first [, list of N lists of hint features]."""
        hard = self.hard_masks()
        self._apply_masks([straight_through(h, s) for h, s in zip(hard, self.scores)])
        features: dict[str, torch.Tensor] = {}
        hooks = [self.body.get_submodule(n).register_forward_hook(
                 lambda m, i, o, n=n: features.__setitem__(n, o)) for n in self.hint_names] if with_features else []
        try:
            out = self.body(x.repeat(self.n, *([1] * (x.dim() - 1))))  # (N*B, K)
        finally:
            # the masks live on in the autograd graph; the modules must not hold them (deepcopy, pickling)
            self._apply_masks(None)
            for h in hooks:
                h.remove()
        logits = list(out.chunk(self.n))
        if not with_features:
            return logits
        # per member, the hint features in layer order: feats[i][j] is (B, C_j, H_j, W_j)
        chunks = [features[n].chunk(self.n) for n in self.hint_names]
        feats = [[c[i] for c in chunks] for i in range(self.n)]
        return logits, feats

    # ------------------------------------------------------------------ export
    def decisions(self, i: int) -> dict[str, list[int]]:
        """Member i's pruning decisions: for each group's root conv, the output channels it keeps."""
        masks = self.hard_masks()
        return {g.root: torch.nonzero(masks[gi][i]).flatten().tolist() for gi, g in enumerate(self.groups)}

    def plain_member(self, i: int) -> nn.Module:
        """Member i as the original architecture at full width (its stem, BNs and head), unpruned."""
        plain = copy.deepcopy(self.body)
        for name, m in list(plain.named_modules()):
            if isinstance(m, Memberwise):
                _set_module(plain, name, m.copies[i])
            elif isinstance(m, ReLUPassZero):
                _set_module(plain, name, nn.ReLU(inplace=m.inplace))
        return plain

    def export(self, i: int = 0) -> nn.Module:
        """Member i as a plain, physically smaller ``nn.Module`` (Torch-Pruning removes the filters,
        their BN channels and the next layers' input channels). Eval outputs equal the masked member's."""
        return apply_decisions(self.plain_member(i), self.decisions(i), self.input_size)

    def member_cost(self, i: int, masks: list[torch.Tensor] | None = None) -> tuple[int, int]:
        """Member i's exact (FLOPs, params) once exported."""
        masks = masks or self.hard_masks()
        return self.cost_model.cost([m[i].cpu() for m in masks])

    def member_stats(self) -> list[dict]:
        """Per member: ratio, budget, kept-filter fraction, requested and achieved FLOPs/params, kept channels."""
        masks = self.hard_masks()
        out = []
        for i in range(self.n):
            flops, params = self.member_cost(i, masks)
            out.append({"ratio": self.ratios[i], "budget": self.budget,
                        "kept_fraction": sum(int(m[i].sum()) for m in masks) / self.total_filters,
                        "flops": flops, "params": params,
                        "requested_flops": self.targets[i] if self.budget == "flops" else None,
                        "requested_params": self.targets[i] if self.budget == "params" else None,
                        "kept_channels": {g.root: int(masks[gi][i].sum()) for gi, g in enumerate(self.groups)}})
        return out


def apply_decisions(model: nn.Module, decisions: dict[str, list[int]], input_size: tuple[int, ...]) -> nn.Module:
    """Physically prune ``model`` in place so each named root conv keeps only the listed output channels."""
    p = next(model.parameters())
    was_training = model.training
    model.eval()
    with torch.enable_grad():  # Torch-Pruning traces the graph through autograd
        dg = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_size, device=p.device))
    for root, kept in decisions.items():
        conv = model.get_submodule(root)
        drop = sorted(set(range(conv.out_channels)) - set(kept))
        if drop:
            dg.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=drop).prune()
    model.train(was_training)
    return model
