"""Trainer throughput, side by side in one process: a plain supervised step of the model vs a cascade step with
N = 1..4 members (budgets flops / filters, torch.compile off / on), the share of the per-step masks, and
optionally real CIFAR-10 joint and fine-tune epochs with the GPU's utilisation.

    python bench/throughput.py [--model vgg16_cifar --width 1.0 --batch 128 --iters 20 --compile]
                               [--data DIR (ImageFolder CIFAR-10) --train-subset N]   # + real epochs
    python bench/throughput.py --smoke        # CPU check: small width, few iterations

"vs plain" = (N x plain step time) / cascade step time: per-member throughput relative to ordinary training
of the same network (1.0 = a member costs what plain training costs). Writes bench/throughput.json.
Imports neither optuna, ray nor mlflow (the GPU machine has none of them).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import tempfile
import threading
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


def plain_step(model, x, y, device, compile_: bool):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)

    def loss(xb, yb):
        with autocast(device):
            return {"loss": F.cross_entropy(model(xb).float(), yb)}

    step = Step(loss, [opt], compile=compile_)
    return lambda: step(x, y)


def cascade_step(net, teacher, x, y, device, compile_: bool):
    opt_w = torch.optim.SGD([p for n, p in net.named_parameters() if n != "scores"], lr=1e-3, momentum=0.9,
                            nesterov=True)
    opt_s = torch.optim.RMSprop([net.scores], lr=1e-4)

    def loss(xb, yb):
        with autocast(device):
            with torch.no_grad():
                t = teacher(xb)
            return cascade_loss(net(xb), yb, t, tau=15.0, lambda_kd=0.4, lambda_h=0.0)

    step = Step(loss, [opt_w, opt_s], compile=compile_)
    return lambda: step(x, y)


def mask_seconds(net: CascadeNet, iters: int, device) -> float:
    """The per-step threshold masks alone (what every training forward computes once)."""
    layout = net._layout()
    return timed(lambda: threshold_masks(net.scores, layout, kind=net.budget, limits=net.limits,
                                         round_to=net.round_to), iters, device)


class GpuSampler:
    """nvidia-smi's SM utilisation, sampled every 0.2 s while a block runs (mean in percent, or None)."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()

    def __enter__(self):
        if shutil.which("nvidia-smi"):
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True).stdout.split()
            if out:
                self.samples.append(float(out[0]))
            time.sleep(0.2)

    def __exit__(self, *exc):
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) if self.samples else None


def epochs(args, device) -> dict:
    """One joint epoch of a 3-member cascade and one fine-tune epoch of its exported -73% student on real data."""
    from cascade.config import load_prune_config
    from cascade.train import run_prune

    cfg = load_prune_config(None, [f"model.width={args.width}", "data.name=imagefolder", f"data.root={args.data}",
                                   f"data.batch_size={args.batch}", f"device={device}", "teacher.epochs=1",
                                   "schedule.joint_epochs=1", "schedule.finetune_epochs=1",
                                   "cascade.ratios=[0.73,0.487,0.0]", f"compile={str(args.compile).lower()}"]
                            + ([f"data.train_subset={args.train_subset}"] if args.train_subset else []))
    with GpuSampler() as gpu, tempfile.TemporaryDirectory() as out:
        result = run_prune(cfg, out, log=lambda s: None)
    joint, finetune = result["history"]
    return {"train_images": None if not args.train_subset else args.train_subset,
            "joint_epoch_s": joint["epoch_time"], "finetune_epoch_s": finetune["epoch_time"],
            "student_flops_reduction": result["flops_reduction"], "gpu_util_mean": gpu.mean}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="vgg16_cifar")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-members", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="also time every step under torch.compile")
    ap.add_argument("--data", help="ImageFolder CIFAR-10 root: also time real joint and fine-tune epochs")
    ap.add_argument("--train-subset", type=int)
    ap.add_argument("--smoke", action="store_true", help="CPU check: width 0.125, batch 16, 2 iterations")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(Path(__file__).with_name("throughput.json")))
    args = ap.parse_args()
    if args.smoke:
        args.width, args.batch, args.iters, args.max_members = 0.125, 16, 2, 3
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = create_model(args.model, num_classes=10, width=args.width)
    teacher = prepare(create_model(args.model, num_classes=10, width=args.width), device).eval()
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    example = torch.zeros(1, 3, 32, 32)
    rows = []
    for compile_ in ([False, True] if args.compile else [False]):
        plain = timed(plain_step(prepare(create_model(args.model, num_classes=10, width=args.width), device),
                                 x, y, device, compile_), args.iters, device)
        rows.append({"step": "plain", "compile": compile_, "ms": plain * 1e3})
        print(f"plain step{' (compiled)' if compile_ else ''}: {plain * 1e3:.2f} ms")
        for budget in ("flops", "filters"):
            for n in range(1, args.max_members + 1):
                ratios = member_ratios(0.73, n - 1, "paper")
                net = prepare(CascadeNet(model, ratios, example, budget=budget, hint_layers=0), device,
                              channels_last=False)
                step = timed(cascade_step(net, teacher, x, y, device, compile_), args.iters, device)
                masks = mask_seconds(net, args.iters, device)
                rows.append({"step": f"cascade N={n}", "budget": budget, "compile": compile_, "ratios": ratios,
                             "ms": step * 1e3, "mask_ms": masks * 1e3, "mask_share": masks / step,
                             "vs_plain": n * plain / step})
                print(f"N={n} {budget:7s}{' compiled' if compile_ else ''}: {step * 1e3:8.2f} ms  masks "
                      f"{masks * 1e3:6.2f} ms ({masks / step:5.1%})  vs plain x{n * plain / step:.2f}")
    report = {"model": args.model, "width": args.width, "batch": args.batch, "device": str(device),
              "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "torch_threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d"), "rows": rows}
    if args.data:
        report["epochs"] = epochs(args, device)
        print("epochs:", report["epochs"])
    Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
