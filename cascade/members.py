"""``CascadeNet``: one CNN run as N members (student first) that share its convolution weights.

Every member owns its stem (first conv), BatchNorms, head (last linear) and filter scores. The batch is laid
out member-minor: image b of member n is row b*N + n of the (B*N, C, H, W) activations, so that

- the stem is ONE conv with N*C output channels on the (B, 3, H, W) input, viewed as (B*N, C, H', W');
- every shared conv, activation, pooling and residual addition runs once over all members (batch-independent);
- the N BatchNorms of a layer are ONE batch-norm over the free view (B, N*C, H, W), the member masks folded
  into its affine weight and bias (a masked channel is exactly zero: no BN shift leaks);
- the head is one batched matmul over the (B, N, F) view.

The member modules are in ``member_ops``, reading the model in ``introspect``, plain models in ``export``.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .budget import CostModel, _Layout, fill, group_counts, threshold_masks
from .config import BUDGETS, SCORE_INITS
from .export import plain_member
from .flops import trace_layers
from .groups import BN_TYPES, PruneGroup, check_has_batchnorm, find_groups, remove_channels
from .introspect import drop_train_only_heads, hint_points, set_module
from .masks import keep_count, route_to_teacher, straight_through
from .member_ops import PASS_ZERO, MemberBN, MemberHead, MemberStem, main_output

__all__ = ["CascadeNet", "validate_cascade"]


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


class CascadeNet(nn.Module):
    """A hierarchy of members T_0 (student) ... T_{N-1} over one model's shared conv weights.

    ``ratios[i]`` is the fraction member i removes (of the FLOPs, params or filters: ``budget``), student
    first, strictly decreasing. ``forward(x)`` returns one logits tensor per member, student first.
    ``prune_stem``: the stem's filters are prunable too (each member masks its own stem); off, every member keeps
    its stem whole, as the paper has it.
    Models that cannot be pruned exactly are refused with a ValueError naming the reason and the layer.
    """

    def __init__(self, model: nn.Module, ratios: list[float], example_input: torch.Tensor, *,
                 score_init: str = "rank", hint_layers: int = 3, route_scores: bool = True, budget: str = "flops",
                 round_to: int = 1, prune_stem: bool = True):
        super().__init__()
        validate_cascade(list(ratios), budget=budget, score_init=score_init, round_to=round_to)
        check_has_batchnorm(model)
        self.budget, self.round_to = budget, int(round_to)
        self.ratios = [float(k) for k in ratios]
        self.n = n = len(ratios)
        self.input_size = tuple(example_input.shape[1:])
        body = copy.deepcopy(model).cpu().eval()
        example_input = example_input[:1].cpu()
        self.dropped_heads = drop_train_only_heads(body, example_input)
        calls = trace_layers(body, example_input)
        (self.stem_name, stem, _), (self.head_name, head, _) = calls[0], calls[-1]
        if not isinstance(stem, nn.Conv2d) or stem.groups != 1:
            raise ValueError(f"cannot prune: the stem {self.stem_name!r} must be a plain Conv2d (groups=1)")
        if not isinstance(head, nn.Linear):
            raise ValueError(f"cannot prune: the head {self.head_name!r} must be nn.Linear, got {type(head).__name__}")
        # prune_stem: the stem's output filters join the pruning, each member masking its own stem by its own
        # threshold (the paper's whole stem keeps its full-resolution FLOPs and takes them from every later
        # layer: docs/method.md)
        ignored = [self.head_name] if prune_stem else [self.stem_name, self.head_name]
        self.groups: list[PruneGroup] = find_groups(body, example_input, ignored=ignored)

        # flat filter numbering: group after group
        sizes = [g.size for g in self.groups]
        offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.total_filters = f = sum(sizes)
        self.register_buffer("group_of", torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes)),
                             persistent=False)
        self.register_buffer("sizes", torch.tensor(sizes), persistent=False)
        self.cost_model = CostModel.build(body, example_input, self.groups)
        flops, params = self.cost_model.cost(self.sizes)
        self.base_cost = (int(flops), int(params))
        self.keep = [keep_count(k, f, min_keep=len(self.groups)) for k in self.ratios]
        idx = 1 if budget == "params" else 0
        self.targets = [(1 - k) * self.base_cost[idx] for k in self.ratios]
        limits = self.keep if budget == "filters" else self.targets
        self.register_buffer("limits", torch.tensor(limits, dtype=torch.float64), persistent=False)

        # Scores (N, F). "rank" (default): each filter's L1-norm rank within its layer, in (0, 1], so one global
        # threshold starts as uniform per-layer L1 pruning (a strong start: BENCHMARKS.md) and training moves
        # filters across layers from there. "l1": the L1 norm / the layer's largest. "random": ablation.
        init = []
        for gi, g in enumerate(self.groups):
            l1 = body.get_submodule(g.root).weight.detach().abs().flatten(1).sum(1)  # (C_g,)
            if score_init == "rank":
                init.append((l1.argsort().argsort().float() + 1) / g.size)
            elif score_init == "l1":
                init.append(l1 / l1.max().clamp_min(1e-12))
            else:
                init.append(torch.rand(g.size, generator=torch.Generator().manual_seed(gi)))
        self.scores = nn.Parameter(torch.cat(init).float().repeat(n, 1))  # (N, F)
        self.route_scores = route_scores  # the cascaded update; False only for ablations
        # A pruned stem is each member's own conv, not shared: member i+1's stem filter j is another filter than
        # member i's, so its gradient says nothing about i's. Those scores keep their own gradient.
        own = torch.zeros(f, dtype=torch.bool)
        for gi, g in enumerate(self.groups):
            if g.root == self.stem_name:
                own[offsets[gi]:offsets[gi] + g.size] = True
        self.register_buffer("_own_grad", own, persistent=False)
        self.scores.register_hook(self._route)

        # Each BatchNorm's channels -> flat filter (or F: a channel of no group, always kept). A BN after a
        # concatenation takes its channels from several groups; each position finds its own.
        bn_index: dict[str, torch.Tensor] = {}
        for name, m in body.named_modules():
            if isinstance(m, BN_TYPES):
                bn_index[name] = torch.full((m.num_features,), f, dtype=torch.long)
        for gi, g in enumerate(self.groups):
            for bn, roots in g.bns:
                bn_index[bn][torch.tensor(g.bn_positions[bn])] = torch.tensor(roots) + offsets[gi]
        self.hint_points = hint_points(body, example_input, hint_layers) if hint_layers > 0 else []

        for name, m in list(body.named_modules()):
            if type(m) in PASS_ZERO:
                set_module(body, name, PASS_ZERO[type(m)](inplace=m.inplace))
            elif isinstance(m, BN_TYPES):
                set_module(body, name, MemberBN(m, n))
        set_module(body, self.stem_name, MemberStem(stem, n))
        set_module(body, self.head_name, MemberHead(head, n))
        self.body = body
        self._bns = [(body.get_submodule(name), name) for name in bn_index]
        for i, idx_ in enumerate(bn_index.values()):  # (C_bn,) flat filter of each channel, as buffers (device)
            self.register_buffer(f"_bn_index{i}", idx_, persistent=False)
        self._features: dict[str, torch.Tensor] | None = None
        for name, _ in self.hint_points:
            body.get_submodule(name).register_forward_hook(self._tap(name))
        self._cache: dict[str, tuple] = {}

    def _route(self, grad: torch.Tensor) -> torch.Tensor:
        """The cascaded score update (``masks.route_to_teacher``) on the shared filters' scores."""
        if not self.route_scores:
            return grad
        return torch.where(self._own_grad, grad, route_to_teacher(grad))

    @property
    def hint_names(self) -> list[str]:
        return [name for name, _ in self.hint_points]

    def _tap(self, name: str):
        def hook(_m, _i, out):
            if self._features is not None:
                self._features[name] = out.clone()  # a later in-place op must not change the hint's input
        return hook

    def _layout(self) -> _Layout:
        return _Layout(self.group_of, self.sizes, self.cost_model)

    # ------------------------------------------------------------------ masks
    # Eager even inside a compiled step, and outside autocast: the cost model prices exact integers in float64,
    # which a compiled graph under CUDA autocast fed a float32 operand ("expected mat1 and mat2 to have the same
    # dtype"); the masks are a few small ops per step, not worth a graph.
    @torch.compiler.disable
    def _threshold(self) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(self.scores.device.type, enabled=False):
            return threshold_masks(self.scores, self._layout(), kind=self.budget, limits=self.limits,
                                   round_to=self.round_to)

    def step_masks(self) -> torch.Tensor:
        """(N, F) 0/1: each member's global threshold (the per-step masks; tensor work on the scores' device,
        no host synchronisation), cached until the scores change: what training and evaluation use, and what
        a member exports as trained (``export(i, fill=False)``)."""
        return self._cached("step", self._threshold)

    def final_masks(self) -> torch.Tensor:
        """(N, F) 0/1: the threshold masks, each filled with the best filters that still fit the budget (once
        per score update, on the host): what a budget-exact export (the student, fine-tuned next: it trains
        the filters the fill adds) and the budget statistics use."""
        def compute():
            step = self.step_masks()
            if self.budget == "filters":
                return step
            return torch.stack([fill(step[i], self.scores[i], self._layout(), kind=self.budget,
                                     limit=float(self.targets[i]), round_to=self.round_to) for i in range(self.n)])
        return self._cached("final", compute)

    def hard_masks(self) -> torch.Tensor:
        """The masks a forward pass uses: the threshold, in training computed afresh (the scores change every
        step; no cache, so a compiled step holds no Python state), in evaluation cached once per score update
        and reused by every evaluation batch. The same masks in both: a member is evaluated as it trains."""
        return self._threshold() if self.training else self.step_masks()

    def _cached(self, key: str, compute):
        version = (self.scores._version, self.scores.data_ptr(), self.scores.device)
        hit = self._cache.get(key)
        if hit is None or hit[0] != version:
            with torch.no_grad():
                hit = self._cache[key] = (version, compute())
        return hit[1]

    def group_masks(self, masks: torch.Tensor) -> list[torch.Tensor]:
        """(N, F) -> one (N, C_g) tensor per group."""
        return list(masks.split(self.sizes.tolist(), dim=1))

    def _bn_masks(self, masks: torch.Tensor) -> list[torch.Tensor]:
        """(N, F) -> each BatchNorm's (N, C_bn) mask, every channel from its own group (or always kept)."""
        masks = torch.cat([masks, masks.new_ones(self.n, 1)], dim=1)  # (N, F+1): the last slot is "always kept"
        return [masks[:, getattr(self, f"_bn_index{i}")] for i in range(len(self._bns))]

    def _apply_masks(self, masks: torch.Tensor | None) -> None:
        per_bn = [None] * len(self._bns) if masks is None else [m.reshape(-1) for m in self._bn_masks(masks)]
        for (bn, _), m in zip(self._bns, per_bn):
            bn.mask = m

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, *, with_features: bool = False):
        """x: (B, C, H, W) -> list of N logits (B, K), student first [, per member the hint features]."""
        self._apply_masks(straight_through(self.hard_masks(), self.scores))
        self._features = {} if with_features else None
        try:
            out = main_output(self.body(x))                         # (B*N, K), member-minor
        finally:
            self._apply_masks(None)  # the masks live on in the autograd graph; the modules must not hold them
            feats, self._features = self._features, None
        logits = list(out.view(-1, self.n, out.shape[-1]).unbind(1))
        if not with_features:
            return logits
        # per member, the hint features in order: (B*N, C, H, W) -> member i's (B, C, H, W)
        per_point = [feats[name].view(-1, self.n, *feats[name].shape[1:]).unbind(1) for name in self.hint_names]
        return logits, [[p[i] for p in per_point] for i in range(self.n)]

    # ------------------------------------------------------------------ export
    def masks(self, fill: bool) -> torch.Tensor:
        """(N, F): the budget-filled masks (``final_masks``) or the trained ones (``step_masks``)."""
        return self.final_masks() if fill else self.step_masks()

    def decisions(self, i: int, fill: bool = True) -> dict[str, list[int]]:
        """Member i's pruning decisions: for each group's root conv, the output channels it keeps."""
        masks = self.group_masks(self.masks(fill).cpu())
        return {g.root: torch.nonzero(masks[gi][i]).flatten().tolist() for gi, g in enumerate(self.groups)}

    def kept_positions(self, i: int, bn: str, fill: bool = True) -> torch.Tensor:
        """The channel positions of BatchNorm ``bn`` that member i keeps."""
        k = [name for _, name in self._bns].index(bn)
        return torch.nonzero(self._bn_masks(self.masks(fill))[k][i]).flatten()

    def member_parameters(self) -> list[nn.Parameter]:
        """The members' own parameters (stems, BatchNorms, heads; not the scores), each laid out member-major:
        ``p.view(N, -1)[i]`` is member i's. The rest of the body's parameters are shared by every member."""
        return [p for m in self.body.modules() if isinstance(m, (MemberBN, MemberStem, MemberHead))
                for p in m.parameters()]

    def plain_member(self, i: int) -> nn.Module:
        """Member i as the original architecture at full width (its stem, BNs and head), unpruned."""
        return plain_member(self.body, i, self.hint_names)

    def export(self, i: int = 0, fill: bool = True) -> nn.Module:
        """Member i as a plain, physically smaller ``nn.Module`` (Torch-Pruning removes the filters,
        their BN channels and the next layers' input channels). ``fill``: with the filters that still fit the
        budget (exact FLOPs, for a model fine-tuned next); else as trained, its eval outputs equal to the masked
        member's."""
        return remove_channels(self.plain_member(i), self.groups, self.decisions(i, fill))

    def member_cost(self, i: int, masks: torch.Tensor | None = None) -> tuple[int, int]:
        """Member i's exact (FLOPs, params) once exported (the filled masks unless given)."""
        masks = self.final_masks() if masks is None else masks
        flops, params = self.cost_model.cost(self.counts(masks[i]))
        return int(flops), int(params)

    def counts(self, masks: torch.Tensor) -> torch.Tensor:
        """masks (..., F) -> kept filters per group (..., G)."""
        return group_counts(masks, self.group_of, len(self.groups))

    def member_stats(self) -> list[dict]:
        """Per member: ratio, budget, kept-filter fraction, requested and achieved FLOPs/params (and their
        ratio), kept channels per group."""
        masks = self.final_masks()
        flops, params = (t.tolist() for t in self.cost_model.cost(self.counts(masks)))
        kept = self.group_masks(masks.cpu())
        out = []
        for i in range(self.n):
            achieved = params[i] if self.budget == "params" else flops[i]
            out.append({"ratio": self.ratios[i], "budget": self.budget,
                        "kept_fraction": float(masks[i].sum()) / self.total_filters,
                        "flops": flops[i], "params": params[i],
                        "requested_flops": self.targets[i] if self.budget == "flops" else None,
                        "requested_params": self.targets[i] if self.budget == "params" else None,
                        "budget_used": achieved / self.targets[i] if self.budget != "filters" else None,
                        "kept_channels": {g.root: int(kept[gi][i].sum()) for gi, g in enumerate(self.groups)}})
        return out
