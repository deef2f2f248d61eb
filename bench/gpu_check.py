"""The prepared GPU check: trainer throughput, real epochs against the compute floor, packing, compile.

    python bench/gpu_check.py --data DIR [--out bench/gpu_check.json] [--deadline 420]   # on a CUDA machine
    python bench/gpu_check.py --smoke --out /tmp/gpu_check.json                          # CPU check (the suite)

In one process (the packing workers aside), in this order, each figure saved to ``--out`` as it is measured and
every part skipped, with the reason, once the deadline would be passed:

1. ``steps``: bench/throughput.py's plain vs cascade N = 1..4 steps (budgets flops / filters, eager) at batch
   128 and ``--large-batch``, with the masks' share of a step;
2. ``epochs``: real epochs on the 45,000 training images of an ImageFolder CIFAR-10 (val_fraction 0.1): the
   teacher's, the 2- and 4-member joint epochs and the -73% student's fine-tune epoch, through the product's own
   loops (``engine.fit``, ``train.prune_epochs``), each the second epoch of its phase (the first warms up), with
   the GPU's utilisation and the ratio to the compute floor: (3 x 2 x MACs per trained member + 2 x MACs for the
   frozen teacher's forward) per image, at 50% of ``PEAK_BF16``;
3. ``packing``: 1, 2, 4 and 8 processes on the one GPU, each running the same 2-member joint step on real
   augmented batches, started together: aggregate images per second and the speed-up over one process;
4. ``compile_steps``: a 3-member joint step eager vs ``torch.compile`` (default and reduce-overhead): the first
   steps' losses from identical nets (equal within bf16 rounding) and the step times;
5. ``compile_cli``: ``cascade prune`` on digits with ``compile: true`` (joint and fine-tune steps compiled, 2 + 2
   epochs), as a subprocess: its exit code, wall time and epochs.

Needs torch, torchvision, numpy and torch-pruning only (no optuna, ray or mlflow).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project root, for `python bench/gpu_check.py`
sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import cascade_step, joint_step, plain_step, step_rows, timed  # noqa: E402

from cascade import CascadeNet, count_flops, create_model, load_data, load_prune_config  # noqa: E402
from cascade.engine import fit, prepare, resolve_device  # noqa: E402
from cascade.train import prune_epochs  # noqa: E402
from spaces.ratios import member_ratios  # noqa: E402

PEAK_BF16 = 990e12  # dense bf16 FLOP/s of an H100/H200 SXM (datasheet); the floor assumes half of it
FLOOR_EFFICIENCY = 0.5


class GpuSampler:
    """nvidia-smi's utilization.gpu (the share of time a kernel ran: dmon's ``sm`` column), every 0.1 s while a
    block runs; ``mean`` in percent, or None without nvidia-smi."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

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
            time.sleep(0.1)

    def __exit__(self, *exc):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


class Report:
    """The JSON report, rewritten atomically after every figure; ``left()`` is the time to the deadline."""

    def __init__(self, path: Path, deadline: float, **head):
        self.path, self.t0, self.deadline = path, time.time(), deadline
        self.data = {**head, "sections": {}, "skipped": []}
        self.save()

    def left(self) -> float:
        return self.deadline - (time.time() - self.t0)

    def put(self, section: str, key: str, value) -> None:
        self.data["sections"].setdefault(section, {})[key] = value
        self.save()

    def skip(self, what: str, why: str) -> None:
        self.data["skipped"].append(f"{what}: {why}")
        print(f"skipped {what}: {why}", flush=True)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)


def floor_s(flop_per_image: float, images: int) -> float:
    return flop_per_image * images / (FLOOR_EFFICIENCY * PEAK_BF16)


# ---------------------------------------------------------------- 1. steps
def steps(rep: Report, args, device) -> None:
    for batch in (args.batch, args.large_batch):
        if rep.left() < args.costs["steps"]:
            rep.skip(f"steps b={batch}", "deadline")
            continue
        rows = step_rows(model_name="vgg16_cifar", width=args.width, batch=batch, iters=args.iters,
                         max_members=args.max_members, compile_modes=[None], device=device)
        rep.put("steps", f"batch_{batch}", rows)


# ---------------------------------------------------------------- 2. epochs
def _data(args):
    if args.smoke:  # a few batches an epoch: the smoke run checks that every section runs, not its figures
        return load_data(name="digits", val_fraction=0.1, train_subset=20 * args.batch)
    return load_data(name="imagefolder", root=args.data, val_fraction=0.1)


def _prune_cfg(args, ratios, joint, finetune, extra=()):
    data = ["data.name=digits"] if args.smoke else ["data.name=imagefolder", f"data.root={args.data}"]
    return load_prune_config(None, [f"model.width={args.width}", f"data.batch_size={args.batch}",
                                    "data.val_fraction=0.1", f"cascade.ratios={list(ratios)}",
                                    f"schedule.joint_epochs={joint}", f"schedule.finetune_epochs={finetune}",
                                    *data, *extra])


def _epoch_row(seconds: float, images: int, flop_per_image: float, util: float | None, **kw) -> dict:
    floor = floor_s(flop_per_image, images)
    return {**kw, "images": images, "epoch_s": round(seconds, 3), "images_per_s": round(images / seconds),
            "floor_s": float(f"{floor:.3g}"), "x_floor": round(seconds / floor, 1), "gpu_util": util}


def epochs(rep: Report, args, device) -> None:
    data = _data(args)
    n_img = len(data.train) // args.batch * args.batch  # the last partial batch is dropped in training
    torch.manual_seed(0)
    base = create_model("vgg16_cifar", num_classes=data.num_classes, width=args.width)
    macs, _ = count_flops(base, data.input_size)
    rep.put("epochs", "model_macs", macs)

    mode = args.compile_mode  # None: eager
    tag = f"_{mode}" if mode else ""
    # the teacher: plain supervised training through engine.fit, its second epoch timed from fit's log lines
    marks: list[float] = [time.perf_counter()]
    with GpuSampler() as gpu:
        def log(_line):
            marks.append(time.perf_counter())
            if len(marks) == 2:
                gpu.samples.clear()  # the second epoch's samples only
        fit(create_model("vgg16_cifar", num_classes=data.num_classes, width=args.width), data, device,
            loss_fn=lambda m, x, y: torch.nn.functional.cross_entropy(m(x).float(), y), epochs=2, lr=0.05,
            momentum=0.9, weight_decay=5e-4, restart_epochs=2, restart_decay=1.0, batch_size=args.batch, seed=0,
            log=log, name="teacher", compile_mode=mode)
    rep.put("epochs", f"teacher{tag}", _epoch_row(marks[2] - marks[1], n_img, 6 * macs, gpu.mean, members=1,
                                                  first_epoch_s=round(marks[1] - marks[0], 1)))

    teacher = (prepare(base, device).eval().requires_grad_(False), 0.0)
    extra = [f"device={device}"] + (["compile=true", f"compile_mode={mode}"] if mode else [])
    for n, finetune in ((2, 2), (4, 0)):
        if rep.left() < args.costs["epoch_run"] * n / 2 + (args.costs["compile"] * 1.5 if mode else 0):
            rep.skip(f"epochs joint N={n}{tag}", "deadline")
            continue
        ratios = member_ratios(0.73, n - 1, "paper")
        cfg = _prune_cfg(args, ratios, 2, finetune, extra)
        with tempfile.TemporaryDirectory() as out:
            gen = prune_epochs(cfg, out, data=data, teacher=teacher, log=lambda s: None)
            for phase, count in (("joint", 2), ("finetune", finetune)):
                first = None
                for e in range(count):
                    with GpuSampler() as gpu:
                        m = next(gen)
                    first = first or m["epoch_time"]
                    if e == 1:
                        if phase == "joint":
                            row = _epoch_row(m["epoch_time"], n_img, (6 * n + 2) * macs, gpu.mean, members=n,
                                             ratios=ratios, first_epoch_s=round(first, 1))
                        else:
                            state = torch.load(Path(out) / "checkpoint.pt", weights_only=False)
                            s_macs = state["member_stats"][0]["flops"]
                            row = _epoch_row(m["epoch_time"], n_img, 6 * s_macs + 2 * macs, gpu.mean,
                                             student_macs=s_macs, student_flops_reduction=1 - s_macs / macs,
                                             first_epoch_s=round(first, 1))
                        rep.put("epochs", f"{phase}_N{n}{tag}", row)
            gen.close()


# ---------------------------------------------------------------- 3. packing
def worker(args) -> None:
    """One packed trial: build, warm up, wait for ``go``, then ``--steps`` joint steps on real batches."""
    device = resolve_device("auto")
    data = _data(args)
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", num_classes=data.num_classes, width=args.width)
    net = prepare(CascadeNet(model, [0.73, 0.0], torch.zeros(1, *data.input_size), hint_layers=0), device,
                  channels_last=False)
    teacher = prepare(create_model("vgg16_cifar", num_classes=data.num_classes, width=args.width), device).eval()
    g = torch.Generator().manual_seed(args.worker_index)

    def batches():
        while True:
            yield from data.train.batches(args.batch, device, train=True, generator=g)

    it = batches()
    opt_step = joint_step(net, teacher, device, None)
    for _ in range(5):
        opt_step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    d = Path(args.worker)
    (d / f"ready-{args.worker_index}").touch()
    while not (d / "go").exists():
        time.sleep(0.002)
    t0 = time.time()
    for _ in range(args.steps):
        opt_step(*next(it))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.time()
    (d / f"done-{args.worker_index}.json").write_text(json.dumps({"t0": t0, "t1": t1,
                                                                  "images": args.steps * args.batch}))


def packing(rep: Report, args, device) -> None:
    one = None
    for k in args.pack:
        if rep.left() < args.costs["pack"] + 3 * k:
            rep.skip(f"packing k={k}", "deadline")
            continue
        with tempfile.TemporaryDirectory() as d:
            cmd = [sys.executable, __file__, "--worker", d, "--steps", str(args.steps), "--width", str(args.width),
                   "--batch", str(args.batch)] + (["--smoke"] if args.smoke else ["--data", args.data])
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // k))}
            procs = [subprocess.Popen(cmd + ["--worker-index", str(i)], env=env) for i in range(k)]
            limit = time.time() + max(30.0, rep.left() - 15)
            while sum((Path(d) / f"ready-{i}").exists() for i in range(k)) < k and time.time() < limit:
                if any(p.poll() not in (None, 0) for p in procs):
                    break
                time.sleep(0.05)
            (Path(d) / "go").touch()
            for p in procs:
                try:
                    p.wait(timeout=max(1.0, limit - time.time()))
                except subprocess.TimeoutExpired:
                    p.kill()
            done = [json.loads((Path(d) / f"done-{i}.json").read_text()) for i in range(k)
                    if (Path(d) / f"done-{i}.json").exists()]
        if len(done) < k:
            rep.put("packing", f"k{k}", {"error": f"{k - len(done)} of {k} workers did not finish"})
            continue
        span = max(r["t1"] for r in done) - min(r["t0"] for r in done)
        agg = sum(r["images"] for r in done) / span
        one = one or agg
        rep.put("packing", f"k{k}", {"processes": k, "span_s": round(span, 3), "images_per_s": round(agg),
                                     "speedup_vs_one": round(agg / one, 2)})
        print(f"packing k={k}: {agg:.0f} images/s (x{agg / one:.2f})", flush=True)


# ---------------------------------------------------------------- 4. compiled steps
def compile_steps(rep: Report, args, device) -> None:
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", num_classes=10, width=args.width)
    teacher = prepare(create_model("vgg16_cifar", num_classes=10, width=args.width), device).eval()
    x = torch.randn(args.batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    ratios = member_ratios(0.73, 2, "paper")
    eager_losses = None
    for mode in (None, "default", "reduce-overhead"):
        if mode and rep.left() < args.costs["compile"]:
            rep.skip(f"compile_steps {mode}", "deadline")
            continue
        net = prepare(CascadeNet(model, ratios, torch.zeros(1, 3, 32, 32), hint_layers=0), device,
                      channels_last=False)  # built afresh from the same model: identical nets
        t0 = time.time()
        try:
            step = cascade_step(net, teacher, x, y, device, mode)
            losses = [float(step()["loss"]) for _ in range(3)]
            first_s = time.time() - t0
            ms = timed(step, args.iters, device) * 1e3
        except Exception as e:  # a compile failure is a finding, not the end of the check
            rep.put("compile_steps", mode or "eager", {"error": f"{type(e).__name__}: {str(e)[:800]}"})
            continue
        row = {"losses": losses, "ms": round(ms, 3), "first_3_steps_s": round(first_s, 1)}
        if mode is None:
            eager_losses = losses
        elif eager_losses:
            row["max_rel_diff_vs_eager"] = max(abs(a - b) / abs(b) for a, b in zip(losses, eager_losses))
        rep.put("compile_steps", mode or "eager", row)
        print(f"compile_steps {mode or 'eager'}: {row}", flush=True)
    if rep.left() > args.costs["compile"]:
        t0 = time.time()
        plain = timed(plain_step(prepare(create_model("vgg16_cifar", num_classes=10, width=args.width), device),
                                 x, y, device, "default"), args.iters, device)
        rep.put("compile_steps", "plain_default", {"ms": round(plain * 1e3, 3), "with_compile_s": time.time() - t0})


# ---------------------------------------------------------------- 5. compile through the CLI
def compile_cli(rep: Report, args, device) -> None:
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-m", "cascade.cli", "prune", "--out", out, "--set", "data.name=digits",
               "--set", f"model.width={args.width}", "--set", "teacher.epochs=1", "--set", "schedule.joint_epochs=2",
               "--set", "schedule.finetune_epochs=2", "--set", "cascade.ratios=[0.73,0.0]", "--set", "compile=true"]
        t0 = time.time()
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=max(10, rep.left() - 20),
                               cwd=Path(__file__).resolve().parents[1])
            rc, tail = p.returncode, (p.stdout + p.stderr)[-1500:]
        except subprocess.TimeoutExpired as e:
            rc, tail = "timeout", str(e.stdout or "")[-1500:]
        row = {"exit": rc, "wall_s": round(time.time() - t0, 1), "log_tail": tail}
        result = Path(out) / "result.json"
        if result.exists():
            hist = json.loads(result.read_text())["history"]
            row["epoch_s"] = {f"{h['phase']}_{h['epoch']}": round(h["epoch_time"], 3) for h in hist}
            row["accuracy"] = json.loads(result.read_text())["accuracy"]
        rep.put("compile_cli", "prune", row)


# ---------------------------------------------------------------- the report
def markdown(rep: dict) -> str:
    """BENCHMARKS.md's GPU section from the JSON (``--report FILE``): the targets first, then the tables."""
    s, ep = rep["sections"], rep["sections"].get("epochs", {})
    lines = [f"{rep.get('gpu')} (torch {rep['torch']}), VGG16-CIFAR full width, bf16 autocast, batch {rep['batch']}, "
             f"CIFAR-10 (45,000 training images). Floor: the epoch's counted FLOPs at "
             f"{rep['floor_efficiency']:.0%} of {rep['peak_bf16'] / 1e12:.0f} TFLOP/s.", "",
             "| epoch (2nd of its phase) | eager s | x floor | GPU util | compiled (reduce-overhead) s | x floor "
             "| GPU util | first epoch with compile s |", "|---|---|---|---|---|---|---|---|"]
    for key, name in (("teacher", "teacher (plain)"), ("joint_N2", "joint, 2 members"),
                      ("joint_N4", "joint, 4 members"), ("finetune_N2", "fine-tune, -73% student")):
        e, c = ep.get(key), ep.get(f"{key}_reduce-overhead")
        cell = lambda r, k: "" if not r or r.get(k) is None else r[k]  # noqa: E731
        lines.append(f"| {name} | {cell(e, 'epoch_s')} | {cell(e, 'x_floor')} | {cell(e, 'gpu_util')} | "
                     f"{cell(c, 'epoch_s')} | {cell(c, 'x_floor')} | {cell(c, 'gpu_util')} | "
                     f"{cell(c, 'first_epoch_s')} |")
    for batch_key, rows in s.get("steps", {}).items():
        if not isinstance(rows, list):
            continue
        plain = next(r for r in rows if r["step"] == "plain")
        lines += ["", f"Steps at batch {rows[0]['batch']} (eager; plain {plain['ms']:.2f} ms):", "",
                  "| members | budget | ms | masks ms (share) | per-member throughput vs plain |",
                  "|---|---|---|---|---|"]
        for r in rows:
            if r["step"] != "plain":
                lines.append(f"| {r['step'].split('=')[1]} | {r['budget']} | {r['ms']:.2f} | "
                             f"{r['mask_ms']:.2f} ({r['mask_share']:.1%}) | {r['vs_plain']:.2f} |")
    cs = s.get("compile_steps", {})
    if cs:
        lines += ["", "Compiled 3-member joint step (batch 128, flops budget, no hints), three steps from identical "
                  "nets:", "", "| mode | ms | losses | max relative difference vs eager |", "|---|---|---|---|"]
        for mode in ("eager", "default", "reduce-overhead"):
            r = cs.get(mode)
            if r and "ms" in r:
                diff = r.get("max_rel_diff_vs_eager")
                lines.append(f"| {mode} | {r['ms']:.2f} | {', '.join(f'{x:.4f}' for x in r['losses'])} | "
                             f"{'' if diff is None else f'{diff:.2%}'} |")
            elif r:
                lines.append(f"| {mode} | failed: {r['error'][:200]} | | |")
    pk = [v for k, v in s.get("packing", {}).items() if k.startswith("k") and "processes" in v]
    if pk:
        lines += ["", "Packing (processes on the one GPU, each a 2-member joint step on real batches, eager):", "",
                  "| processes | images/s (all) | speed-up vs one |", "|---|---|---|"]
        lines += [f"| {r['processes']} | {r['images_per_s']} | {r['speedup_vs_one']:.2f} |" for r in pk]
    cli = s.get("compile_cli", {}).get("prune")
    if cli:
        lines += ["", f"`cascade prune` on digits with `compile: true`: exit {cli['exit']} after {cli['wall_s']} s."]
    if rep.get("skipped"):
        lines += ["", "Skipped at the deadline: " + "; ".join(rep["skipped"]) + "."]
    return "\n".join(lines)


SECTIONS = {"steps": steps, "epochs": epochs, "packing": packing, "compile_steps": compile_steps,
            "compile_cli": compile_cli}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="ImageFolder CIFAR-10 root (train/ and test/)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("gpu_check.json")))
    ap.add_argument("--deadline", type=float, help="seconds; parts that would pass it are skipped (default 420; "
                                                   "none with --smoke, whose every part must run however loaded "
                                                   "the CPU is)")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--large-batch", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--max-members", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100, help="joint steps per packed process")
    ap.add_argument("--pack", type=int, nargs="+", default=[1, 2, 4, 8])
    ap.add_argument("--compile-mode", choices=["default", "reduce-overhead"],
                    help="epochs: train through torch.compile in this mode (default: eager)")
    ap.add_argument("--sections", nargs="+", choices=list(SECTIONS),
                    help="default: all (with --smoke, all but the compiled ones: a cold compile takes minutes on CPU)")
    ap.add_argument("--smoke", action="store_true", help="CPU check: digits, width 0.125, small batches")
    ap.add_argument("--report", metavar="JSON", help="print BENCHMARKS.md's GPU section from a saved report")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.report:
        return print(markdown(json.loads(Path(args.report).read_text())))
    if args.smoke:
        args.width, args.batch, args.large_batch, args.iters, args.max_members = 0.125, 16, 32, 2, 2
        args.steps, args.pack = 3, [1, 2]
    elif not args.data and not args.worker:
        ap.error("--data is needed off --smoke")
    if args.deadline is None:
        args.deadline = float("inf") if args.smoke else 420.0
    # seconds each part needs at least (checked against the deadline before it starts)
    args.costs = {"steps": 20, "epoch_run": 40, "pack": 25, "compile": 60} if not args.smoke else \
        {"steps": 0, "epoch_run": 0, "pack": 0, "compile": 0}
    if args.worker:
        return worker(args)
    device = resolve_device("auto")
    rep = Report(Path(args.out), args.deadline, device=str(device), torch=torch.__version__,
                 gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
                 peak_bf16=PEAK_BF16, floor_efficiency=FLOOR_EFFICIENCY, width=args.width, batch=args.batch)
    for name in args.sections or [s for s in SECTIONS if not (args.smoke and s.startswith("compile"))]:
        t0 = time.time()
        try:
            SECTIONS[name](rep, args, device)
        except Exception:
            rep.put(name, "error", traceback.format_exc()[-2000:])
            print(traceback.format_exc(), flush=True)
        rep.put(name, "section_s", round(time.time() - t0, 1))
        print(f"== {name} done in {time.time() - t0:.1f}s ({rep.left():.0f}s to the deadline)", flush=True)


if __name__ == "__main__":
    main()
