"""The member-wise modules ``CascadeNet`` puts in place of a model's stem, BatchNorms, head and ReLUs: N members'
parameters stacked, run as one op over the member-minor batch (image b of member n is row b*N + n)."""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MemberBN", "MemberStem", "MemberHead", "ReLUPassZero", "ReLU6PassZero", "PASS_ZERO", "main_output"]


def main_output(out):
    """The logits of a model whose train-mode output also carries auxiliary heads (GoogLeNet, Inception)."""
    return out[0] if isinstance(out, (tuple, list)) else out


class _ClampPassZero(torch.autograd.Function):
    """clamp(x, lo, hi) whose backward also passes the gradient at the bounds (a valid subgradient).

    Saves a bool tensor (1 byte an element), not x."""

    @staticmethod
    def forward(ctx, x, lo, hi):
        keep = (x >= lo) if hi is None else (x >= lo) & (x <= hi)
        ctx.save_for_backward(keep)
        return x.clamp(lo, hi)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return grad * keep, None, None


class ReLUPassZero(nn.ReLU):
    """The members' ReLU. A masked channel is exactly 0, and torch's relu'(0) = 0 would cut its mask off from
    any gradient; passing it at 0 gives the straight-through gradient the method needs (sum of dL/dY_n *
    unmasked output_n), so a pruned filter can come back. Same forward as nn.ReLU. (Hardswish, SiLU and GELU
    already have a non-zero slope at 0.)"""

    def forward(self, x):
        return _ClampPassZero.apply(x, 0.0, None)


class ReLU6PassZero(nn.ReLU6):
    """ReLU6 with the gradient passed at 0 (and 6), for the same reason as ``ReLUPassZero``."""

    def forward(self, x):
        return _ClampPassZero.apply(x, 0.0, 6.0)


PASS_ZERO = {nn.ReLU: ReLUPassZero, nn.ReLU6: ReLU6PassZero}


class MemberBN(nn.Module):
    """N BatchNorms as one: (B*N, C, ...) viewed as (B, N*C, ...), parameters and statistics stacked per member.

    ``mask`` (N*C,), set by CascadeNet before each forward, multiplies the affine weight and bias, so a masked
    channel is exactly 0 and its gradient is the straight-through one: dL/dmask = sum of dL/dY * BN(x)."""

    def __init__(self, bn: nn.modules.batchnorm._BatchNorm, n: int):
        super().__init__()
        self.n, self.num_features, self.eps, self.momentum = n, bn.num_features, bn.eps, bn.momentum
        self.kind = type(bn)
        self.weight = nn.Parameter(bn.weight.detach().repeat(n)) if bn.affine else None
        self.bias = nn.Parameter(bn.bias.detach().repeat(n)) if bn.affine else None
        stats = bn.running_mean is not None
        self.register_buffer("running_mean", bn.running_mean.repeat(n) if stats else None)
        self.register_buffer("running_var", bn.running_var.repeat(n) if stats else None)
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked.clone() if stats else None)
        self.mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = x.reshape(x.shape[0] // self.n, self.n * self.num_features, *x.shape[2:])  # free if contiguous
        w, b = self.weight, self.bias
        if self.mask is not None:
            w = self.mask if w is None else w * self.mask
            b = None if b is None else b * self.mask
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average, as nn.BatchNorm
                factor = 1.0 / float(self.num_batches_tracked)
        training = self.training or self.running_mean is None
        return F.batch_norm(view, self.running_mean, self.running_var, w, b, training, factor, self.eps).view(x.shape)

    def member(self, i: int) -> nn.Module:
        """Member i's BatchNorm as a plain module of the original type."""
        c = self.num_features
        bn = self.kind(c, eps=self.eps, momentum=self.momentum, affine=self.weight is not None,
                       track_running_stats=self.running_mean is not None).to(self._device())
        with torch.no_grad():
            if self.weight is not None:
                bn.weight.copy_(self.weight[i * c:(i + 1) * c])
                bn.bias.copy_(self.bias[i * c:(i + 1) * c])
            if self.running_mean is not None:
                bn.running_mean.copy_(self.running_mean[i * c:(i + 1) * c])
                bn.running_var.copy_(self.running_var[i * c:(i + 1) * c])
                bn.num_batches_tracked.copy_(self.num_batches_tracked)
        return bn

    def _device(self):
        return next(self.buffers()).device


class MemberStem(nn.Module):
    """N stems as one conv with N*C_out filters: (B, C_in, H, W) -> (B*N, C_out, H', W'), member-minor."""

    def __init__(self, conv: nn.Conv2d, n: int):
        super().__init__()
        self.n, self.out_channels = n, conv.out_channels
        self.conv = copy.deepcopy(conv)
        self.conv.weight = nn.Parameter(conv.weight.detach().repeat(n, 1, 1, 1))
        if conv.bias is not None:
            self.conv.bias = nn.Parameter(conv.bias.detach().repeat(n))
        self.conv.out_channels = n * conv.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # (B, N*C_out, H', W')
        return y.reshape(y.shape[0] * self.n, self.out_channels, *y.shape[2:])

    def member(self, i: int) -> nn.Conv2d:
        c = self.out_channels
        conv = copy.deepcopy(self.conv)
        conv.out_channels = c
        conv.weight = nn.Parameter(self.conv.weight.detach()[i * c:(i + 1) * c].clone())
        if self.conv.bias is not None:
            conv.bias = nn.Parameter(self.conv.bias.detach()[i * c:(i + 1) * c].clone())
        return conv


class MemberHead(nn.Module):
    """N linear heads as one batched matmul: (B*N, F) -> (B*N, K), member-minor."""

    def __init__(self, linear: nn.Linear, n: int):
        super().__init__()
        self.n = n
        self.weight = nn.Parameter(linear.weight.detach().repeat(n, 1, 1))                 # (N, K, F)
        self.bias = nn.Parameter(linear.bias.detach().repeat(n, 1)) if linear.bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("bnf,nkf->bnk", x.reshape(-1, self.n, x.shape[-1]), self.weight)  # (B, N, K)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(-1, y.shape[-1])

    def member(self, i: int) -> nn.Linear:
        k, f = self.weight.shape[1:]
        lin = nn.Linear(f, k, bias=self.bias is not None).to(self.weight.device)
        with torch.no_grad():
            lin.weight.copy_(self.weight[i])
            if self.bias is not None:
                lin.bias.copy_(self.bias[i])
        return lin
