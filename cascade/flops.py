"""FLOPs and parameters in the paper's convention: multiply-accumulates of conv and linear layers only."""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["count_flops"]


@torch.no_grad()
def count_flops(model: nn.Module, input_size: tuple[int, ...] = (3, 32, 32)) -> tuple[int, int]:
    """Return ``(flops, params)`` for one input of ``input_size`` (C, H, W).

    FLOPs are conv/linear MACs (no bias, BN or activation); params are the conv/linear weights and biases.
    """
    flops = 0

    def conv_hook(m: nn.Conv2d, _inp, out):
        nonlocal flops
        # each output element is a dot product over (C_in / groups) * kh * kw inputs
        flops += out.numel() // out.shape[0] * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear_hook(m: nn.Linear, _inp, out):
        nonlocal flops
        flops += out.numel() // out.shape[0] * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        p = next(model.parameters())
        model(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    params = sum(p.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
                 for p in m.parameters(recurse=False))
    return int(flops), int(params)
