"""Trainer throughput: a cascade training step with N members (one batched pass through the shared convs)
vs N separate single-member steps (the naive loop), and the teacher's share of a step.

    python bench/throughput.py [--model vgg16_cifar --width 0.25 --batch 64 --iters 10 --device auto]

Writes bench/throughput.json. Both sides run in the same process, on the same inputs, side by side.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from cascade import CascadeNet, create_model
from cascade.engine import autocast, prepare, resolve_device
from cascade.losses import cascade_loss
from spaces import member_ratios


def step_seconds(net, teacher, x, y, iters: int, device) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)

    def step():
        with autocast(device):
            with torch.no_grad():
                t = teacher(x)
            logits = net(x)
            loss = cascade_loss(logits, y, t, tau=4.0, lambda_kd=0.4, lambda_h=0.0)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _timed(step, iters, device)


def _timed(fn, iters, device) -> float:
    for _ in range(2):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / iters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16_cifar")
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--max-members", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(Path(__file__).with_name("throughput.json")))
    args = ap.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, width=args.width)
    teacher = prepare(create_model(args.model, num_classes=10, width=args.width), device).eval()
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    example = torch.zeros(1, 3, 32, 32)
    single = step_seconds(prepare(CascadeNet(model, [0.6], example), device), teacher, x, y, args.iters, device)
    with torch.no_grad():
        teacher_s = _timed(lambda: teacher(x), args.iters, device)
    rows = []
    for n in range(1, args.max_members + 1):
        net = prepare(CascadeNet(model, member_ratios(0.6, n - 1, "paper"), example), device)
        batched = step_seconds(net, teacher, x, y, args.iters, device)
        naive = n * single
        rows.append({"members": n, "batched_step_s": batched, "naive_step_s": naive,
                     "batched_images_per_s": args.batch / batched, "naive_images_per_s": args.batch / naive,
                     "speedup": naive / batched, "teacher_share": teacher_s / batched})
        print(f"N={n}: batched {args.batch / batched:8.1f} img/s  naive loop {args.batch / naive:8.1f} img/s  "
              f"speed-up x{naive / batched:.2f}  teacher share {teacher_s / batched:.1%}")
    out = {"model": args.model, "width": args.width, "batch": args.batch, "device": str(device),
           "machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
           "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "rows": rows}
    Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
