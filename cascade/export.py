"""Members as plain models: a member's own modules put back into a copy of the body, and pruning decisions
applied to a fresh architecture (``result.json``'s ``decisions``)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from .flops import trace_layers
from .groups import find_groups, remove_channels
from .introspect import set_module
from .member_ops import MemberBN, MemberHead, MemberStem, ReLU6PassZero, ReLUPassZero

__all__ = ["plain_member", "apply_decisions"]


def plain_member(body: nn.Module, i: int, hint_names: list[str]) -> nn.Module:
    """Member i of a CascadeNet's ``body`` as the original architecture at full width (its stem, BNs, head)."""
    plain = copy.deepcopy(body)
    for name, m in list(plain.named_modules()):
        if isinstance(m, (MemberBN, MemberStem, MemberHead)):
            set_module(plain, name, m.member(i))
        elif type(m) in (ReLUPassZero, ReLU6PassZero):
            set_module(plain, name, type(m).__mro__[1](inplace=m.inplace))
    for name in hint_names:
        plain.get_submodule(name)._forward_hooks.clear()
    return plain


def apply_decisions(model: nn.Module, decisions: dict[str, list[int]], input_size: tuple[int, ...]) -> nn.Module:
    """Physically prune a fresh copy of the architecture ``model`` in place so each named root conv keeps only
    the listed output channels (``result.json``'s decisions): the groups are found again, then removed."""
    example = torch.zeros(1, *input_size, device=next(model.parameters()).device)
    was_training = model.training
    calls = trace_layers(model.eval(), example)
    # the head is never pruned; the stem's group is found either way and kept only when the decisions name it
    # (a net with prune_stem on): ignoring the stem makes no other group's root differ
    groups = find_groups(model, example, ignored=[calls[-1][0]])
    remove_channels(model, [g for g in groups if g.root in decisions], decisions)
    return model.train(was_training)
