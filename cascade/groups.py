"""Prunable channel groups: which filters can be masked after a BatchNorm and then physically removed.

Torch-Pruning's dependency graph gives the coupled channels (residual additions, concatenations, depthwise
convs): one group per root conv, with the position map of every layer it touches. A group is kept when
masking its channels at the BatchNorms' outputs is exact, i.e. computes what removing them computes:

- it touches at least one BatchNorm (the mask sits on BN outputs, so a masked channel is exactly zero);
- it touches no grouped (non-depthwise) convolution: Torch-Pruning removes channels from those only
  uniformly across the conv's groups, which one global threshold does not give;
- it touches no other layer with parameters (LayerNorm, GroupNorm, attention): the mask and the cost model
  know convs, linears and BatchNorms only;
- zeroing its BN outputs zeroes every input channel its consumers read (checked by a forward pass, below):
  a channel that reaches a consumer by a path without a masked BN (an un-normalised skip, say) would leak.

A model with no such group is refused with one line naming the reason and the layer.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch_pruning as tp

__all__ = ["PruneGroup", "find_groups", "check_has_batchnorm", "remove_channels", "BN_TYPES"]

BN_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d)


@dataclass
class PruneGroup:
    """Coupled channels that are removed together, with one score/mask entry per channel."""
    root: str                                # name of the conv whose output channels index the group
    size: int                                # channels in the group
    bns: list[tuple[str, list[int]]]         # (BatchNorm name, root index of each of its group positions)
    bn_positions: dict[str, list[int]] = field(default_factory=dict)  # BatchNorm name -> its positions
    layers: list[tuple[str, str, list[int]]] = field(default_factory=list)  # (conv/linear, "in"|"out", root idx)
    in_positions: dict[str, list[int]] = field(default_factory=dict)   # consumer name -> input positions
    items: list[tuple[str, Callable, list[int], list[int]]] = field(default_factory=list)  # (layer, Torch-Pruning
    # function that removes its channels, positions, root channel of each position) for every layer with weights


def _grouped(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels)


def check_has_batchnorm(model: nn.Module) -> None:
    """Refuse, before any work (the model may even be on the meta device), a model with no BatchNorm."""
    if not any(isinstance(m, BN_TYPES) for m in model.modules()):
        conv = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), "?")
        raise ValueError(f"cannot prune: no BatchNorm in the model (the masks sit on BatchNorm outputs; "
                         f"conv {conv!r} has none after it)")


def find_groups(model: nn.Module, example_input: torch.Tensor, ignored: list[str]) -> list[PruneGroup]:
    """The prunable channel groups of ``model`` (eval mode), or ValueError naming why there are none."""
    names = {m: n for n, m in model.named_modules()}
    check_has_batchnorm(model)
    try:
        with torch.enable_grad():  # Torch-Pruning traces the graph through autograd
            dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input)
    except Exception as e:  # e.g. a channel shuffle (a reshape that mixes channels): Torch-Pruning cannot map it
        raise ValueError(f"cannot prune: Torch-Pruning cannot trace the channel dependencies of "
                         f"{type(model).__name__!r} ({type(e).__name__}: {' '.join(str(e).split())[:120]}; "
                         f"channel shuffles and other channel-mixing reshapes are not supported)") from None
    candidates, reasons = [], []
    with _index_mapping_once(dg):
        all_groups = list(dg.get_all_groups(ignored_layers=[model.get_submodule(n) for n in ignored],
                                            root_module_types=[nn.Conv2d]))
    for group in all_groups:
        root = group[0].dep.target.module
        g = PruneGroup(names[root], root.out_channels, [])
        grouped = other = None
        for item in group.items:
            mod, fn = item.dep.target.module, item.dep.handler
            pairs = sorted(zip(item.idxs, item.root_idxs))  # (target position, root channel)
            if isinstance(mod, (nn.Conv2d, nn.Linear) + BN_TYPES):
                g.items.append((names[mod], fn, [p for p, _ in pairs], [r for _, r in pairs]))
            if isinstance(mod, BN_TYPES):
                g.bns.append((names[mod], [r for _, r in pairs]))
                g.bn_positions[names[mod]] = [p for p, _ in pairs]
            elif isinstance(mod, (nn.Conv2d, nn.Linear)):
                out = dg.is_out_channel_pruning_fn(fn)
                g.layers.append((names[mod], "out" if out else "in", [r for _, r in pairs]))
                if not out:
                    g.in_positions[names[mod]] = [p for p, _ in pairs]
                if _grouped(mod):
                    grouped = names[mod]
            elif isinstance(mod, nn.Module) and mod in names and any(True for _ in mod.parameters(recurse=False)):
                other = other or names[mod]  # LayerNorm, GroupNorm, attention: neither masked nor costed here
        if not g.bns:
            reasons.append(f"conv {g.root!r} has no BatchNorm after it")
        elif grouped:
            reasons.append(f"conv {g.root!r} feeds the grouped convolution {grouped!r}")
        elif other:
            reasons.append(f"conv {g.root!r} is coupled with {other!r}, neither a conv, a linear nor a BatchNorm")
        else:
            candidates.append(g)
    groups, leaks = _exact_groups(model, example_input, candidates)
    reasons += leaks
    if not groups:
        why = reasons[0] if reasons else "every conv is coupled with the stem or the head"
        raise ValueError(f"cannot prune: no channel group can be masked exactly ({why})")
    return groups


@contextlib.contextmanager
def _index_mapping_once(dg: tp.DependencyGraph) -> Iterator[None]:
    """Torch-Pruning recomputes every concat/split index mapping of the graph before each group it lists:
    quadratic in the concatenations (DenseNet-201: 200 groups x 102 concats, 19 of its 20 s here). The mappings
    depend on the graph alone, unchanged while groups are only listed, so compute them once. Where the library
    is laid out differently, nothing is patched (slower, same groups)."""
    im = getattr(getattr(tp, "dependency", None), "index_mapping", None)
    update = getattr(im, "update_index_mapping", None)
    if update is None:
        yield
        return
    update(dg)
    im.update_index_mapping = lambda graph: None if graph is dg else update(graph)
    try:
        yield
    finally:
        im.update_index_mapping = update


def _channels_first(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer's input as (batch, channel positions, rest): a Linear reads its features on the last dim."""
    if isinstance(layer, nn.Linear) and x.dim() > 2:
        x = x.movedim(-1, 1)
    return x.flatten(2) if x.dim() > 2 else x


@torch.no_grad()
def _exact_groups(model: nn.Module, example_input: torch.Tensor, groups: list[PruneGroup],
                  chunk: int = 16) -> tuple[list[PruneGroup], list[str]]:
    """Keep the groups whose masked BN outputs zero every input their consumers read.

    One forward pass per ``chunk`` groups: sample 0 runs unmasked, sample j+1 with group j's channels
    zeroed at its BatchNorms' outputs (per-sample masks through forward hooks, BN in eval mode so the
    samples stay independent); each consumer's input positions of group j must then be exactly zero."""
    x0 = torch.randn(1, *example_input.shape[1:], generator=torch.Generator().manual_seed(0))
    kept, leaks = [], []
    for start in range(0, len(groups), chunk):
        part = groups[start:start + chunk]
        masks: dict[str, torch.Tensor] = {}
        for j, g in enumerate(part):
            for bn, pos in g.bn_positions.items():
                if bn not in masks:
                    masks[bn] = torch.ones(len(part) + 1, model.get_submodule(bn).num_features)
                masks[bn][j + 1, pos] = 0.0
        inputs: dict[str, torch.Tensor] = {}
        consumers = {name for g in part for name in g.in_positions}

        def bn_hook(out: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # per-sample mask on a BN output
            return out * mask.view((out.shape[0], out.shape[1]) + (1,) * (out.dim() - 2))

        hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, mask=mask: bn_hook(o, mask))
                 for n, mask in masks.items()]
        hooks += [model.get_submodule(n).register_forward_pre_hook(
                  lambda m, i, n=n, store=inputs: store.__setitem__(n, _channels_first(m, i[0]))) for n in consumers]
        try:
            model(x0.expand(len(part) + 1, *x0.shape[1:]).contiguous())
        finally:
            for h in hooks:
                h.remove()
        for j, g in enumerate(part):
            leak = next((name for name, pos in g.in_positions.items()
                         if inputs[name].shape[0] != len(part) + 1 or max(pos) >= inputs[name].shape[1]
                         or inputs[name][j + 1, pos].abs().max() > 0), None)
            if leak is None:
                kept.append(g)
            else:
                leaks.append(f"masking conv {g.root!r} at its BatchNorms does not zero the input of {leak!r}")
    return kept, leaks


def remove_channels(model: nn.Module, groups: list[PruneGroup], kept: dict[str, list[int]]) -> nn.Module:
    """Physically remove, in place, every channel of each group whose root channel is not in ``kept[root]``,
    with Torch-Pruning's own layer functions. Positions are those of the unpruned model, so each layer's
    removals from every group are gathered first and applied in one call (a depthwise conv's in and out
    channels are one removal)."""
    removals: dict[tuple[str, Callable], set[int]] = {}
    for g in groups:
        drop = set(range(g.size)) - set(kept.get(g.root, range(g.size)))
        for name, fn, positions, roots in g.items:
            removals.setdefault((name, fn), set()).update(p for p, r in zip(positions, roots) if r in drop)
    for (name, fn), positions in removals.items():
        if positions:
            fn(model.get_submodule(name), sorted(positions))
    return model
