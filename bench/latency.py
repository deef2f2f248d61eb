"""Real speed of exported students: latency of the pruned model vs the original, set against the FLOPs ratio
(how much of the theoretical speed-up is real), at batch 1 and 64, on CPU (and CUDA when present).

    python bench/latency.py [--model vgg16_cifar --width 1.0 --targets 0.3 0.6 0.85 --iters 20 --round-to 8]

Students are exported from a CascadeNet at FLOPs budgets (latency does not depend on the trained values),
once with free channel counts and once with every layer's count rounded to a multiple of ``--round-to``
(``cascade.round_to``; 1 skips the rounded ones), so the table shows whether rounding helps.
Writes bench/latency.json; original and students are timed side by side in one process.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from cascade import CascadeNet, count_flops, create_model


@torch.no_grad()
def latency_ms(model: torch.nn.Module, batch: int, device: torch.device, iters: int) -> float:
    model = model.to(device).eval()
    x = torch.randn(batch, 3, 32, 32, device=device)
    for _ in range(3):
        model(x)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return 1000 * sorted(times)[len(times) // 2]  # median


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16_cifar")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--targets", type=float, nargs="+", default=[0.3, 0.6, 0.85])
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--out", default=str(Path(__file__).with_name("latency.json")))
    args = ap.parse_args()
    torch.manual_seed(0)
    base = create_model(args.model, num_classes=10, width=args.width)
    targets = sorted(args.targets, reverse=True)
    models = {"original": (1, base)}  # name -> (round_to, module)
    for round_to in sorted({1, args.round_to}):
        net = CascadeNet(base, targets, torch.zeros(1, 3, 32, 32), budget="flops", round_to=round_to)
        suffix = f", x{round_to} ch" if round_to > 1 else ""
        models.update({f"-{k:.0%} FLOPs{suffix}": (round_to, net.export(i)) for i, k in enumerate(targets)})
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    base_flops, _ = count_flops(base, (3, 32, 32))
    rows = []
    for device in devices:
        for batch in (1, 64):
            ref = latency_ms(base, batch, device, args.iters)
            for name, (round_to, m) in models.items():
                flops, params = count_flops(m.cpu(), (3, 32, 32))
                ms = latency_ms(m, batch, device, args.iters)
                rows.append({"device": str(device), "batch": batch, "model": name, "flops": flops, "params": params,
                             "round_to": round_to,
                             "latency_ms": ms, "flops_speedup": base_flops / flops, "real_speedup": ref / ms})
                print(f"{device.type:4} b={batch:<3} {name:>22}: {ms:8.2f} ms  FLOPs x{base_flops / flops:5.2f}  "
                      f"real x{ref / ms:5.2f}")
    Path(args.out).write_text(json.dumps({"model": args.model, "width": args.width, "torch": torch.__version__,
                                          "threads": torch.get_num_threads(), "machine": platform.machine(),
                                          "date": time.strftime("%Y-%m-%d"), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
