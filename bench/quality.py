"""Quality vs peers: accuracy at matched FLOPs of the cascade (0-3 TAs, and ablations) against one-shot
Torch-Pruning + KD fine-tuning (uniform L1, and global pruning with group-norm or Taylor importance) and a
uniformly thinner network trained from scratch with KD, over several seeds.

    python bench/quality.py --data DIR [--mode cpu|gpu] [--targets 0.57 0.73 0.83] [--seeds 0 1 2]
                            [--methods cascade_0ta cascade_1ta:no_hints l1_kd ...] [--epochs J F] [--set K=V]
                            [--jobs N]

DIR is an ImageFolder-layout CIFAR-10 (train/ and test/ of class folders, e.g. the shared JPEG archive
extracted). Every method gets the same data split and the same frozen teacher (both from seed 0); a seed
changes the run's own randomness (batch order, augmentation, peers' Taylor batches). Each gets the same number
of epochs (the cascade's joint + fine-tune epochs; the peers train that many epochs in total):

- ``cascade_<n>ta``: ``cascade prune`` with n TAs at the paper's placement, FLOPs budget = the target;
  ``cascade_<n>ta:<ablation>[+<ablation>...]`` the same with those ``ABLATIONS`` overrides (each undoes one choice);
- ``l1_kd``: Torch-Pruning's MagnitudePruner (L1, uniform per-layer ratio, linear layers kept) on the teacher,
  the ratio bisected to the target FLOPs, then KD fine-tuning with the cascade's fine-tune optimizer;
  ``l1_kd_stem`` the same with the first conv unpruned, as METHOD.md's member stem (``keep_stem``; a diagnostic);
  ``<peer>:phases`` a peer trained on the cascade's lr schedule: its epochs as two phases of the joint
  and fine-tune lengths, each with its own restart cycles from the peak lr;
- ``tp_global_norm`` / ``tp_global_taylor``: Torch-Pruning's global (non-uniform) pruning with group-L2 or
  first-order Taylor importance (gradients of the KD loss on a few training batches), the global ratio bisected
  to the target FLOPs, then the same KD fine-tuning;
- ``thin_kd``: the same architecture with a smaller width multiplier (bisected to the target FLOPs), trained
  from random init with KD and the teacher's recipe (lr 0.05, one cosine cycle).

KD everywhere is the cascade's logit loss (CE + lambda_KD * tau^2 * KL, same tau and lambda_KD); the cascade
also has its hint term. Selection uses validation only: per target, the best cascade variant and the best peer
are the ones with the highest seed-mean validation accuracy; their test accuracies are compared. Each finished
(method, target, seed) row is saved at once into the JSON and skipped on a rerun with the same settings, so a
long run resumes; cascade runs also resume mid-run from their own checkpoints. ``--jobs N`` trains N rows at once,
each in its own process on the same device; an interrupted run (Ctrl-C, SIGTERM) still writes the table of the
rows it finished. Writes bench/quality.json and bench/quality.png (per FLOPs target, every method's seed-mean
test accuracy +- std, sorted).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch_pruning as tp

from cascade import PruneConfig, count_flops, create_model
from cascade.config import prune_config, to_dict
from cascade.engine import evaluate, fit, prepare, resolve_device
from cascade.losses import member_loss
from cascade.teacher import get_teacher
from cascade.train import load_prune_data, run_prune
from spaces import member_ratios

HERE = Path(__file__).parent
# CPU: small width, a 10k-image subset and few epochs. GPU: the paper's VGG16 setting.
MODES = {
    "cpu": dict(width=0.25, train_subset=10_000, teacher_epochs=15, epochs=(4, 4), batch_size=128),
    "gpu": dict(width=1.0, train_subset=None, teacher_epochs=200, epochs=(80, 80), batch_size=128),
}
# The paper's three students as FLOPs reductions of VGG16 (313M -> 134M, 83M, 52M).
PAPER_TARGETS = [0.57, 0.73, 0.83]
CASCADES = {"cascade_0ta": 0, "cascade_1ta": 1, "cascade_2ta": 2, "cascade_3ta": 3}
PEERS = ["l1_kd", "l1_kd_stem", "tp_global_norm", "tp_global_taylor", "thin_kd"]
# Each ablation undoes one of the method's choices (BENCHMARKS.md, "Quality vs peers").
ABLATIONS = {
    "shared_own_grads": ["loss.own_grads=shared"],   # members' own BN/stem/head trained at w_i (was 1/N) x lr
    "no_hints": ["loss.lambda_h=0"],
    "score_lr_1e-4": ["optim.score_lr=1e-4"],         # the paper's constant score lr instead of the scaled one
    "student_w0.75": ["loss.student_weight=0.75"],    # 3/4 of the shared weights' gradient from the student
    "score_cosine": ["optim.score_schedule=cosine"],  # the scores' lr anneals to 0: masks settle before export
    "lr_run": ["optim.lr_schedule=run"],              # one lr schedule over both phases: no restart at fine-tuning
    "keep_stem": ["cascade.prune_stem=false"],        # METHOD.md's stem: never pruned (the default prunes it)
    "l1init": ["cascade.score_init=l1"],
    "filters_budget": ["cascade.budget=filters"],     # the paper's k (a fraction of filters), not of FLOPs
}
NEEDS_TAS = {"student_w0.75", "shared_own_grads"}  # with 0 TAs the student is the only member: a no-op
# A peer's one ablation: the cascade's lr schedule (two phases, joint then fine-tune epochs, each restarting its
# cycles at the peak lr) instead of one schedule over all its epochs, so the schedule is not what separates them.
PEER_ABLATIONS = {"phases"}
DEFAULT_METHODS = ["cascade_0ta", "cascade_1ta", "cascade_2ta", "l1_kd", "tp_global_norm", "tp_global_taylor"]


def split_method(name: str) -> tuple[str, list[str]]:
    """``cascade_1ta:lr_run+no_hints`` -> ("cascade_1ta", ["lr_run", "no_hints"])."""
    base, _, ablation = name.partition(":")
    return base, ablation.split("+") if ablation else []


def method_arg(name: str) -> str:
    base, parts = split_method(name)
    if base in PEERS and set(parts) <= PEER_ABLATIONS:
        return name
    if base in CASCADES and CASCADES[base] == 0 and NEEDS_TAS.intersection(parts):
        raise argparse.ArgumentTypeError(f"{name!r}: {', '.join(NEEDS_TAS.intersection(parts))} changes only runs "
                                         "with TAs")
    if base in CASCADES and all(a in ABLATIONS for a in parts):
        return name
    raise argparse.ArgumentTypeError(f"unknown method {name!r}: expected one of {', '.join([*CASCADES, *PEERS])}, "
                                     f"a cascade optionally with :<ablation>[+<ablation>...] "
                                     f"({', '.join(ABLATIONS)}), a peer optionally with "
                                     f":{' or :'.join(sorted(PEER_ABLATIONS))}")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="ImageFolder CIFAR-10 root (train/, test/)")
    ap.add_argument("--mode", choices=sorted(MODES), default="cpu")
    ap.add_argument("--targets", type=float, nargs="+", default=PAPER_TARGETS, help="FLOPs fractions removed")
    ap.add_argument("--methods", nargs="+", type=method_arg, default=DEFAULT_METHODS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, nargs=2, metavar=("JOINT", "FINETUNE"), help="override the mode's")
    ap.add_argument("--width", type=float, help="override the mode's width multiplier")
    ap.add_argument("--train-subset", type=int, help="override the mode's training subset")
    ap.add_argument("--teacher-epochs", type=int, help="override the mode's teacher epochs")
    ap.add_argument("--teacher", help="a teacher checkpoint instead of training one")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="prune-config override for every method, e.g. optim.lr=0.01 (repeatable)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", default="results/bench_quality", help="run directories (checkpoints)")
    ap.add_argument("--out", default=str(HERE / "quality.json"))
    ap.add_argument("--jobs", type=int, default=1, help="rows trained at once, each in its own process on the "
                    "same device (a large GPU: several small trainings together beat one after another)")
    return ap


def configure(args: argparse.Namespace) -> tuple[PruneConfig, dict]:
    """The shared prune config of every row, and the settings that identify the table (and its run directories)."""
    mode = dict(MODES[args.mode])
    for key in ("width", "train_subset", "teacher_epochs", "epochs"):
        if getattr(args, key) is not None:
            mode[key] = tuple(args.epochs) if key == "epochs" else getattr(args, key)
    cfg = PruneConfig(seed=0, device=args.device)
    cfg.model.width = mode["width"]
    cfg.data.name, cfg.data.root = "imagefolder", args.data
    cfg.data.train_subset, cfg.data.batch_size = mode["train_subset"], mode["batch_size"]
    cfg.teacher.epochs, cfg.teacher.checkpoint = mode["teacher_epochs"], args.teacher
    cfg.schedule.joint_epochs, cfg.schedule.finetune_epochs = mode["epochs"]
    cfg = prune_config(to_dict(cfg), args.set)
    settings = {"mode": args.mode, "model": cfg.model.name, **{k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in mode.items()},
                "teacher": args.teacher, "data": str(Path(args.data).resolve()),
                **({"set": args.set} if args.set else {})}
    return cfg, settings


def main() -> None:
    args = parser().parse_args()
    signal.signal(signal.SIGTERM, _exit_once)  # a timeout's SIGTERM still saves the table and plot
    cfg, settings = configure(args)
    joint, finetune = cfg.schedule.joint_epochs, cfg.schedule.finetune_epochs
    # run directories keyed by the settings: a rerun resumes its own cascades, never another table's
    workdir = Path(args.workdir) / hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    if report.get("settings") != settings:  # other settings: start a fresh table
        report = {"settings": settings, "rows": []}
    device = resolve_device(args.device)
    data = load_prune_data(cfg)       # seed 0: one split and one teacher for every method and seed
    teacher, t_acc = get_teacher(cfg, data, device)
    base_flops, base_params = count_flops(teacher, data.input_size)
    report.update(teacher={"accuracy": t_acc, "flops": base_flops, "params": base_params},
                  machine={"machine": platform.machine(), "torch": torch.__version__, "device": str(device),
                           "threads": torch.get_num_threads()}, date=time.strftime("%Y-%m-%d"))
    print(f"teacher: {t_acc:.2f}% at {base_flops / 1e6:.2f}M FLOPs; {len(data.train)} train images, "
          f"{len(data.val)} val, {len(data.test)} test; {joint}+{finetune} epochs")

    done = {(r["method"], r["target"], r["seed"]) for r in report["rows"]}
    pending = [(m, t, s) for s in args.seeds for t in args.targets for m in args.methods if (m, t, s) not in done]

    def save(row: dict) -> None:
        print(f"== {row['method']} @ -{row['target']:.0%} FLOPs, seed {row['seed']}: test {row['accuracy']:.2f}% "
              f"val {row['val_accuracy']:.2f}% at {row['flops'] / 1e6:.2f}M (-{row['flops_reduction']:.1%}), "
              f"{row['wall_s']:.0f}s", flush=True)
        report["rows"].append(row)
        out.write_text(json.dumps(report, indent=2))

    try:
        if args.jobs > 1:
            run_parallel(pending, args, workdir, save)
        else:
            for method, target, seed in pending:
                save(run_row(method, target, seed, cfg, data, (teacher, t_acc), base_flops, workdir, device))
    finally:  # also when interrupted (Ctrl-C, a timeout's SIGTERM): the table and plot of the rows finished
        if report["rows"]:
            report["summary"] = summarize(report["rows"])
            report["verdict"] = verdict(report["summary"])
            out.write_text(json.dumps(report, indent=2))
            plot(report, out.with_suffix(".png"))
            print(table(report))


def _exit_once(*_) -> None:
    """SIGTERM: unwind through the ``finally`` blocks; further SIGTERMs (``timeout`` sends one to the process and
    one to its group) must not cut that short."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(143)


def row_name(method: str, target: float, seed: int) -> str:
    """A row's file-system name: its cascade's run directory and, with ``--jobs``, its log."""
    return f"{method.replace(':', '-')}_{target}_s{seed}"


def run_row(method: str, target: float, seed: int, cfg: PruneConfig, data, teacher: tuple[nn.Module, float],
            base_flops: int, workdir: Path, device: torch.device) -> dict:
    """One (method, FLOPs target, seed) row: train, then the student's test and validation accuracy."""
    t0 = time.time()
    run_cfg = copy.deepcopy(cfg)
    run_cfg.seed = seed
    base, ablations = split_method(method)
    if base in CASCADES:
        run_cfg = prune_config(to_dict(run_cfg), [o for a in ablations for o in ABLATIONS[a]])
        run_cfg.cascade.ratios = member_ratios(target, CASCADES[base], "paper")
        res = run_prune(run_cfg, workdir / row_name(method, target, seed), data=data, teacher=teacher)
        acc, val_acc, flops, params = res["accuracy"], res["val_accuracy"], res["flops"], res["params"]
        churn = [h["churn/m0"] for h in res["history"] if h["phase"] == "joint"]
        extra = {"student_after_joint": res["members"][0]["test_acc"],
                 "members_after_joint": [m["val_acc"] for m in res["members"]], "churn_per_epoch": churn}
    else:
        student, recipe = peer(base, teacher[0], target, base_flops, data, run_cfg, device)
        flops, params = count_flops(student, data.input_size)
        extra = {"start_acc": float(evaluate(prepare(student, device), data.test, device))}
        phases = [cfg.schedule.joint_epochs, cfg.schedule.finetune_epochs]
        for epochs in phases if "phases" in ablations else [sum(phases)]:
            student = distill(student, teacher[0], data, run_cfg, device, epochs=epochs, **recipe)
        acc, val_acc = float(evaluate(student, data.test, device)), float(evaluate(student, data.val, device))
    return {"method": method, "target": target, "seed": seed, "accuracy": acc, "val_accuracy": val_acc,
            "flops": flops, "params": params, "flops_reduction": 1 - flops / base_flops, "wall_s": time.time() - t0,
            **extra}


def run_parallel(pending: list[tuple[str, float, int]], args: argparse.Namespace, workdir: Path,
                 save: Callable[[dict], None]) -> None:
    """Run ``pending`` rows ``args.jobs`` at a time, each as this script in its own process on the same device
    (a large GPU trains several small networks together faster than one after another: one alone leaves it
    idle between kernel launches). Rows start in ``pending``'s order (seed-major: a cut-short run has whole
    seeds) and are saved as each finishes; a row's output goes to ``<workdir>/logs/``. The children find the
    data and the teacher in the cache the parent filled."""
    (workdir / "logs").mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    stop, lock = threading.Event(), threading.Lock()  # set on the way out: no row starts after it
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // args.jobs))}

    def one(row: tuple[str, float, int]) -> tuple[tuple, int, Path]:
        name = row_name(*row)
        part, log = workdir / "logs" / f"{name}.json", workdir / "logs" / f"{name}.log"
        part.unlink(missing_ok=True)
        with open(log, "w") as f:
            with lock:
                if stop.is_set():
                    return row, -1, part
                p = subprocess.Popen(child_argv(args, *row, part), stdout=f, stderr=subprocess.STDOUT, env=env)
                procs.append(p)
            return row, p.wait(), part

    pool = ThreadPoolExecutor(args.jobs)
    try:
        for fut in as_completed([pool.submit(one, row) for row in pending]):
            row, rc, part = fut.result()
            if rc == 0:
                save(json.loads(part.read_text())["rows"][0])
            else:
                tail = part.with_suffix(".log").read_text().splitlines()[-15:]
                print(f"!! {row[0]} @ -{row[1]:.0%} FLOPs, seed {row[2]} failed (exit {rc}); the end of "
                      f"{part.with_suffix('.log')}:\n" + "\n".join(tail), flush=True)
    finally:
        with lock:
            stop.set()
            for p in procs:
                if p.poll() is None:
                    p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)


def child_argv(args: argparse.Namespace, method: str, target: float, seed: int, out: Path) -> list[str]:
    """This script's command line for one row, with the parent's settings (so the same run directory)."""
    argv = [sys.executable, __file__, "--data", args.data, "--mode", args.mode, "--device", args.device,
            "--workdir", args.workdir, "--out", str(out), "--methods", method, "--targets", repr(target),
            "--seeds", str(seed)]
    for flag, value in (("--width", args.width), ("--train-subset", args.train_subset),
                        ("--teacher-epochs", args.teacher_epochs), ("--teacher", args.teacher)):
        argv += [flag, str(value)] if value is not None else []
    argv += ["--epochs", *map(str, args.epochs)] if args.epochs else []
    return argv + [a for kv in args.set for a in ("--set", kv)]


def summarize(rows: list[dict]) -> list[dict]:
    """Per (target, method): the seed mean and std of test and validation accuracy, FLOPs and wall time."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["method"]), []).append(r)
    out = []
    for (target, method), rs in sorted(groups.items()):
        stat = lambda k: (statistics.fmean(r[k] for r in rs),  # noqa: E731
                          statistics.stdev(r[k] for r in rs) if len(rs) > 1 else 0.0)
        (acc, acc_sd), (val, val_sd) = stat("accuracy"), stat("val_accuracy")
        out.append({"target": target, "method": method, "seeds": len(rs), "accuracy": acc, "accuracy_std": acc_sd,
                    "val_accuracy": val, "val_accuracy_std": val_sd, "flops": statistics.fmean(r["flops"] for r in rs),
                    "flops_reduction": statistics.fmean(r["flops_reduction"] for r in rs),
                    "wall_s": statistics.fmean(r["wall_s"] for r in rs)})
    return out


def verdict(summary: list[dict]) -> dict[str, dict]:
    """Per target: the best cascade variant and the best peer, each chosen by seed-mean validation accuracy among
    the methods run with every seed, and the gap of their seed-mean test accuracies; and the best TA variant
    against 0 TAs (plain variants)."""
    out: dict[str, dict] = {}
    for target in sorted({s["target"] for s in summary}):
        rows = [s for s in summary if s["target"] == target]
        seeds = max(s["seeds"] for s in rows)
        rows = [s for s in rows if s["seeds"] == seeds]  # a one-seed ablation does not compete with seed means
        cascades = [s for s in rows if s["method"].startswith("cascade_")]
        peers = [s for s in rows if not s["method"].startswith("cascade_")]
        v: dict = {}
        if cascades and peers:
            c, p = (max(g, key=lambda s: s["val_accuracy"]) for g in (cascades, peers))
            v.update(best_cascade=c["method"], best_peer=p["method"], cascade_accuracy=c["accuracy"],
                     peer_accuracy=p["accuracy"], gap=c["accuracy"] - p["accuracy"])
        plain = {s["method"]: s for s in cascades if ":" not in s["method"]}
        tas = [s for m, s in plain.items() if m != "cascade_0ta"]
        if "cascade_0ta" in plain and tas:
            t = max(tas, key=lambda s: s["val_accuracy"])
            v.update(best_ta=t["method"], ta_gain=t["accuracy"] - plain["cascade_0ta"]["accuracy"])
        out[str(target)] = v
    return out


def peer(method: str, teacher: nn.Module, target: float, base_flops: int, data, cfg: PruneConfig,
         device: torch.device) -> tuple[nn.Module, dict]:
    """The peer's starting student at the target FLOPs and its training recipe."""
    max_flops = (1 - target) * base_flops
    if method == "thin_kd":  # random init at a smaller width; the teacher's recipe (from scratch needs a larger lr)
        epochs = cfg.schedule.joint_epochs + cfg.schedule.finetune_epochs
        return thinner(cfg, max_flops, data), dict(lr=cfg.teacher.lr, weight_decay=cfg.teacher.weight_decay,
                                                   restart_epochs=epochs, restart_decay=1.0)
    if method in ("l1_kd", "l1_kd_stem"):
        student = l1_prune(teacher, max_flops, data.input_size, keep_stem=method == "l1_kd_stem")
    else:
        student = tp_global(teacher, max_flops, data, cfg, method.removeprefix("tp_global_"))
    # pretrained weights, pruned; the cascade's fine-tune recipe
    return student, dict(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                         restart_epochs=cfg.optim.restart_epochs, restart_decay=cfg.optim.restart_decay)


def l1_prune(teacher: nn.Module, max_flops: float, input_size: tuple, *, keep_stem: bool = False) -> nn.Module:
    """One-shot L1-magnitude channel pruning with Torch-Pruning: the largest uniform ratio within ``max_flops``.
    ``keep_stem``: the first conv keeps all its filters, as METHOD.md's member stem does (a diagnostic peer)."""
    def pruned(ratio: float) -> nn.Module:
        m = _prunable(teacher)
        stem = [next(x for x in m.modules() if isinstance(x, nn.Conv2d))] if keep_stem else []
        if ratio > 0:
            tp.pruner.MagnitudePruner(m, torch.zeros(1, *input_size), importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=_linears(m) + stem).step()
        return m

    return _bisect(pruned, max_flops, input_size)


def tp_global(teacher: nn.Module, max_flops: float, data, cfg: PruneConfig, importance: str) -> nn.Module:
    """Torch-Pruning's global pruning (one channel ranking across layers, so layers shrink unevenly) with
    group-L2 (``norm``) or first-order Taylor (``taylor``: |w * dL/dw| of the KD loss over 4 training
    batches) importance; the largest global ratio within ``max_flops``. No layer loses more than 90%."""
    grads: dict[str, torch.Tensor] = {}
    if importance == "taylor":  # the KD loss's gradient on a few seeded training batches, computed once
        device = next(teacher.parameters()).device
        m = _prunable(teacher).to(device)  # fp32, eval mode: every pruned copy would get this same gradient
        g = torch.Generator().manual_seed(cfg.seed)
        for _, (x, y) in zip(range(4), data.train.batches(cfg.data.batch_size, device, train=True, generator=g)):
            with torch.no_grad():
                t_logits = m(x)
            loss = member_loss(m(x), y, t_logits, tau=cfg.loss.tau, lambda_kd=cfg.loss.lambda_kd, lambda_h=0.0)
            loss["loss"].backward()
        grads = {n: p.grad.cpu() for n, p in m.named_parameters()}

    def pruned(ratio: float) -> nn.Module:
        m = _prunable(teacher)
        if ratio <= 0:
            return m
        for n, p in m.named_parameters():
            p.grad = grads[n].clone() if grads else None
        imp = tp.importance.GroupTaylorImportance() if importance == "taylor" else \
            tp.importance.GroupMagnitudeImportance(p=2)
        pruner = tp.pruner.MetaPruner(m, torch.zeros(1, *data.input_size), importance=imp, global_pruning=True,
                                      pruning_ratio=ratio, max_pruning_ratio=0.9, ignored_layers=_linears(m))
        pruner.step()
        m.zero_grad(set_to_none=True)
        return m

    return _bisect(pruned, max_flops, data.input_size)


def _prunable(teacher: nn.Module) -> nn.Module:
    m = copy.deepcopy(teacher).cpu().float().eval()
    for p in m.parameters():
        p.requires_grad_(True)
    return m


def _linears(m: nn.Module) -> list[nn.Module]:
    return [x for x in m.modules() if isinstance(x, nn.Linear)]  # conv filters only, as the cascade


def _bisect(pruned, max_flops: float, input_size: tuple) -> nn.Module:
    """FLOPs fall as the ratio grows: the smallest ratio whose pruned model fits ``max_flops``."""
    lo, hi = 0.0, 0.99
    for _ in range(12):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if count_flops(pruned(mid), input_size)[0] <= max_flops else (mid, hi)
    return pruned(hi)


def thinner(cfg: PruneConfig, max_flops: float, data) -> nn.Module:
    """The model at the largest width multiplier within ``max_flops``, randomly initialised."""
    make = lambda w: create_model(cfg.model.name, num_classes=data.num_classes, width=w)  # noqa: E731
    lo, hi = 0.01, cfg.model.width
    for _ in range(20):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if count_flops(make(mid), data.input_size)[0] <= max_flops else (lo, mid)
    torch.manual_seed(cfg.seed)
    return make(lo)


def distill(student: nn.Module, teacher: nn.Module, data, cfg: PruneConfig, device: torch.device, *,
            epochs: int, lr: float, weight_decay: float, restart_epochs: int, restart_decay: float) -> nn.Module:
    """KD training of ``student`` from the frozen ``teacher`` with the cascade's loss (no hints), SGD + Nesterov."""
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_logits = teacher(x)
        return member_loss(model(x), y, t_logits, tau=cfg.loss.tau, lambda_kd=cfg.loss.lambda_kd, lambda_h=0.0)["loss"]

    return fit(student, data, device, loss_fn=loss_fn, epochs=epochs, lr=lr, momentum=cfg.optim.momentum,
               weight_decay=weight_decay, restart_epochs=restart_epochs, restart_decay=restart_decay,
               batch_size=cfg.data.batch_size, seed=cfg.seed, name="  distill")


def table(report: dict) -> str:
    """Markdown: one row per target, one column per method: seed-mean test accuracy +- std (FLOPs removed),
    then the validation-chosen best cascade against the best peer."""
    summary = report["summary"]
    methods = list(dict.fromkeys(s["method"] for s in summary))
    lines = ["| FLOPs target | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for target in sorted({s["target"] for s in summary}):
        cells = []
        for m in methods:
            r = next((s for s in summary if s["method"] == m and s["target"] == target), None)
            spread = f"± {r['accuracy_std']:.2f}" if r and r["seeds"] > 1 else "(1 seed)"
            cells.append(f"{r['accuracy']:.2f} {spread} (−{r['flops_reduction']:.1%})" if r else "")
        lines.append(f"| −{target:.0%} | " + " | ".join(cells) + " |")
    t = report["teacher"]
    lines.append(f"\nTeacher (unpruned): {t['accuracy']:.2f}% at {t['flops'] / 1e6:.2f}M FLOPs.")
    for target, v in report["verdict"].items():
        if "gap" in v:
            lines.append(f"−{float(target):.0%}: validation picks {v['best_cascade']} and {v['best_peer']}: "
                         f"{v['cascade_accuracy']:.2f}% vs {v['peer_accuracy']:.2f}% ({v['gap']:+.2f} points)"
                         + (f"; best TA variant {v['best_ta']} vs 0 TAs: {v['ta_gain']:+.2f}" if "ta_gain" in v else ""))
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """One panel per FLOPs target: every method with the full seed count (one-seed screens are left to the
    JSON), sorted by its seed-mean test accuracy, ± std as error bars; peers, plain cascades and cascade
    ablations in three colours, so the question "does the cascade beat the best peer" is read at a glance."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seeds = max(r["seeds"] for r in report["summary"])
    rows = [r for r in report["summary"] if r["seeds"] == seeds]
    targets = sorted({r["target"] for r in rows})
    height = 1.2 + 0.28 * max(sum(r["target"] == t for r in rows) for t in targets)
    fig, axes = plt.subplots(1, len(targets), figsize=(6.0 * len(targets), height), squeeze=False)

    def colour(method: str) -> str:
        return "tab:orange" if not method.startswith("cascade") else "tab:gray" if ":" in method else "tab:blue"

    for ax, target in zip(axes[0], targets):
        part = sorted((r for r in rows if r["target"] == target), key=lambda r: r["accuracy"])
        y = range(len(part))
        for i, r in zip(y, part):
            ax.errorbar(r["accuracy"], i, xerr=r["accuracy_std"], fmt="o", capsize=3, color=colour(r["method"]))
        ax.set_yticks(list(y), [r["method"] for r in part], fontsize=7)
        ax.set(title=f"-{target:.0%} FLOPs", xlabel=f"test accuracy (%), {seeds}-seed mean ± std")
        ax.grid(axis="x", alpha=0.3)
    s, t = report["settings"], report["teacher"]
    fig.suptitle(f"{s['model']} x{s['width']}, {s['epochs'][0]}+{s['epochs'][1]} epochs ({s['mode']} mode), "
                 f"teacher {t['accuracy']:.2f}%\norange: peers, blue: cascades, gray: cascade ablations"
                 + (f"\n{', '.join(s['set'])}" if s.get("set") else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
