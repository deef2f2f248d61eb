"""Trainer throughput, side by side in one process: a plain supervised step of the model vs a cascade step with
N = 1..4 members (budgets flops / filters, torch.compile off / on) and the share of the per-step masks.
``bench/gpu_check.py`` runs it on CUDA beside real epochs, packing and the compile check.

    python bench/throughput.py [--model vgg16_cifar --width 1.0 --batch 128 --iters 20 --compile]
    python bench/throughput.py --smoke        # CPU check: small width, few iterations

"vs plain" = (N x plain step time) / cascade step time: per-member throughput relative to ordinary training
of the same network (1.0 = a member costs what plain training costs). Writes bench/throughput.json.
Imports neither optuna, ray nor mlflow (the GPU machine has none of them).
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from cascade import CascadeNet, create_model
from cascade.budget import threshold_masks
from cascade.engine import Step, autocast, prepare, resolve_device
from cascade.losses import cascade_loss
from spaces.ratios import member_ratios


def timed(fn, iters: int, device: torch.device) -> float:
    """Seconds per call, after warm-up (compilation included there)."""
    for _ in range(3):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def plain_step(model, x, y, device, mode: str | None):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def loss(xb, yb):
        with autocast(device):
            return {"loss": F.cross_entropy(model(xb).float(), yb)}

    step = Step(loss, [opt], compile=mode is not None, compile_mode=mode or "default")
    return lambda: step(x, y)


def joint_step(net, teacher, device, mode: str | None) -> Step:
    """A joint step of ``net`` (no hints) with KD from ``teacher``, called with a batch; ``mode`` None: eager,
    else torch.compile's mode."""
    opt_w = torch.optim.SGD([p for n, p in net.named_parameters() if n != "scores"], lr=1e-3, momentum=0.9,
                            nesterov=True)
    opt_s = torch.optim.RMSprop([net.scores], lr=1e-4)

    def loss(xb, yb):
        with autocast(device):
            with torch.no_grad():
                t = teacher(xb)
            return cascade_loss(net(xb), yb, t, tau=15.0, lambda_kd=0.4, lambda_h=0.0)

    return Step(loss, [opt_w, opt_s], compile=mode is not None, compile_mode=mode or "default")


def cascade_step(net, teacher, x, y, device, mode: str | None):
    step = joint_step(net, teacher, device, mode)
    return lambda: step(x, y)


def mask_seconds(net: CascadeNet, iters: int, device) -> float:
    """The per-step threshold masks alone (what every training forward computes once)."""
    layout = net._layout()
    return timed(lambda: threshold_masks(net.scores, layout, kind=net.budget, limits=net.limits,
                                         round_to=net.round_to), iters, device)


def step_rows(*, model_name: str, width: float, batch: int, iters: int, max_members: int, compile_modes: list,
              device: torch.device, log=print) -> list[dict]:
    """Per compile mode (None: eager): the plain step, then cascade N = 1..max_members under both budgets."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, width=width)
    teacher = prepare(create_model(model_name, num_classes=10, width=width), device).eval()
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    example = torch.zeros(1, 3, 32, 32)
    rows = []
    for mode in compile_modes:
        tag = f" (compiled, {mode})" if mode else ""
        plain = timed(plain_step(prepare(create_model(model_name, num_classes=10, width=width), device),
                                 x, y, device, mode), iters, device)
        rows.append({"step": "plain", "batch": batch, "compile": mode, "ms": plain * 1e3})
        log(f"b={batch} plain step{tag}: {plain * 1e3:.2f} ms")
        for budget in ("flops", "filters"):
            for n in range(1, max_members + 1):
                ratios = member_ratios(0.73, n - 1, "paper")
                net = prepare(CascadeNet(model, ratios, example, budget=budget, hint_layers=0), device,
                              channels_last=False)
                step = timed(cascade_step(net, teacher, x, y, device, mode), iters, device)
                masks = mask_seconds(net, iters, device)
                rows.append({"step": f"cascade N={n}", "batch": batch, "budget": budget, "compile": mode,
                             "ratios": ratios, "ms": step * 1e3, "mask_ms": masks * 1e3, "mask_share": masks / step,
                             "vs_plain": n * plain / step})
                log(f"b={batch} N={n} {budget:7s}{tag}: {step * 1e3:8.2f} ms  masks {masks * 1e3:6.2f} ms "
                    f"({masks / step:5.1%})  vs plain x{n * plain / step:.2f}")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16_cifar")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-members", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="also time every step under torch.compile")
    ap.add_argument("--smoke", action="store_true", help="CPU check: width 0.125, batch 16, 2 iterations")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(Path(__file__).with_name("throughput.json")))
    args = ap.parse_args()
    if args.smoke:
        args.width, args.batch, args.iters, args.max_members = 0.125, 16, 2, 3
    device = resolve_device(args.device)
    rows = step_rows(model_name=args.model, width=args.width, batch=args.batch, iters=args.iters,
                     max_members=args.max_members, compile_modes=[None] + (["default"] if args.compile else []),
                     device=device)
    report = {"model": args.model, "width": args.width, "batch": args.batch, "device": str(device),
              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
