"""FLOPs and parameters in the paper's convention: multiply-accumulates of conv and linear layers only."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["count_flops", "trace_layers"]


@torch.no_grad()
def trace_layers(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    """(name, module, output shape) of every conv/linear call of one eval-mode forward pass, in call order."""
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda m, _i, o: calls.append((names[m], m, tuple(o.shape))))
             for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return calls


def count_flops(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> tuple[int, int]:
    """Return ``(flops, params)`` for one input of ``input_size`` (C, H, W).

    FLOPs are conv/linear MACs (no bias, BN or activation); params are the weights and biases of the conv/linear
    layers an eval forward runs (a train-only auxiliary head is not part of the deployed model).
    """
    p = next(model.parameters())
    flops = 0
    calls = trace_layers(model, torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    for _, m, shape in calls:
        out_elems = 1
        for d in shape[1:]:
            out_elems *= d
        if isinstance(m, nn.Conv2d):  # each output element: a dot product over (C_in / groups) * kh * kw inputs
            flops += out_elems * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
        else:
            flops += out_elems * m.in_features
    used = {id(m): m for _, m, _ in calls}.values()  # layers the forward runs (not train-only auxiliary heads)
    params = sum(p.numel() for m in used for p in m.parameters(recurse=False))
    return int(flops), int(params)
