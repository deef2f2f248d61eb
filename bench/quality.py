"""Quality vs peers: test accuracy at matched FLOPs of the cascade (0, 1, 3 TAs) against one-shot L1 channel
pruning + KD fine-tuning (Torch-Pruning) and a uniformly thinner network trained from scratch with KD.

    python bench/quality.py --data DIR [--mode cpu|gpu] [--targets 0.57 0.73 0.83] [--epochs J F] [--set K=V]

DIR is an ImageFolder-layout CIFAR-10 (train/ and test/ of class folders, e.g. the shared JPEG archive
extracted). Every method gets the same data split, the same frozen teacher, the same seed and the same
number of epochs (the cascade's joint + fine-tune epochs; the peers train that many epochs in total):

- ``cascade_<n>ta``: ``cascade prune`` with n TAs at the paper's placement, FLOPs budget = the target;
  ``cascade_0ta_l1init`` is the ablation with ``score_init: l1`` instead of the default ``rank``;
- ``l1_kd``: Torch-Pruning's MagnitudePruner (L1, uniform per-layer ratio, linear layers kept) on the teacher,
  the ratio bisected to the target FLOPs, then KD fine-tuning with the cascade's fine-tune optimizer;
- ``thin_kd``: the same architecture with a smaller width multiplier (bisected to the target FLOPs), trained
  from random init with KD and the teacher's recipe (lr 0.05, one cosine cycle).

KD everywhere is the cascade's logit loss (CE + lambda_KD * tau^2 * KL, same tau and lambda_KD); the cascade
also has its 0.001-weighted hint term. Each finished (method, target) row is saved at once into the JSON and
skipped on a rerun with the same settings, so a long GPU run resumes; cascade runs also resume mid-run from
their own checkpoints. Writes bench/quality.json and bench/quality.png (accuracy vs FLOPs).
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import platform
import time
from pathlib import Path

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
# CPU: small width, a 10k-image subset and few epochs (< 1 h on 2 cores). GPU: the paper's VGG16 setting.
MODES = {
    "cpu": dict(width=0.25, train_subset=10_000, teacher_epochs=15, epochs=(4, 4), batch_size=128),
    "gpu": dict(width=1.0, train_subset=None, teacher_epochs=200, epochs=(80, 80), batch_size=128),
}
# The paper's three students as FLOPs reductions of VGG16 (313M -> 134M, 83M, 52M).
PAPER_TARGETS = [0.57, 0.73, 0.83]
METHODS = ["cascade_0ta", "cascade_1ta", "cascade_3ta", "cascade_0ta_l1init", "l1_kd", "thin_kd"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="ImageFolder CIFAR-10 root (train/, test/)")
    ap.add_argument("--mode", choices=sorted(MODES), default="cpu")
    ap.add_argument("--targets", type=float, nargs="+", default=PAPER_TARGETS, help="FLOPs fractions removed")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=METHODS)
    ap.add_argument("--epochs", type=int, nargs=2, metavar=("JOINT", "FINETUNE"), help="override the mode's")
    ap.add_argument("--width", type=float, help="override the mode's width multiplier")
    ap.add_argument("--train-subset", type=int, help="override the mode's training subset")
    ap.add_argument("--teacher-epochs", type=int, help="override the mode's teacher epochs")
    ap.add_argument("--teacher", help="a teacher checkpoint instead of training one")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="prune-config override for every method, e.g. optim.score_lr=1e-3 (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--workdir", default="results/bench_quality", help="run directories (checkpoints)")
    ap.add_argument("--out", default=str(HERE / "quality.json"))
    args = ap.parse_args()

    mode = dict(MODES[args.mode])
    for key in ("width", "train_subset", "teacher_epochs", "epochs"):
        if getattr(args, key) is not None:
            mode[key] = tuple(args.epochs) if key == "epochs" else getattr(args, key)
    joint, finetune = mode["epochs"]
    cfg = PruneConfig(seed=args.seed, device=args.device)
    cfg.model.width = mode["width"]
    cfg.data.name, cfg.data.root = "imagefolder", args.data
    cfg.data.train_subset, cfg.data.batch_size = mode["train_subset"], mode["batch_size"]
    cfg.teacher.epochs, cfg.teacher.checkpoint = mode["teacher_epochs"], args.teacher
    cfg.schedule.joint_epochs, cfg.schedule.finetune_epochs = joint, finetune
    cfg = prune_config(to_dict(cfg), args.set)
    settings = {"mode": args.mode, "model": cfg.model.name, **{k: list(v) if isinstance(v, tuple) else v
                                                                for k, v in mode.items()},
                "seed": args.seed, "teacher": args.teacher, "data": str(Path(args.data).resolve()),
                "score_init": cfg.cascade.score_init, **({"set": args.set} if args.set else {})}
    # run directories keyed by the settings: a rerun resumes its own cascades, never another table's
    workdir = Path(args.workdir) / hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    if report.get("settings") != settings:  # other settings: start a fresh table
        report = {"settings": settings, "rows": []}
    device = resolve_device(args.device)
    data = load_prune_data(cfg)
    teacher, t_acc = get_teacher(cfg, data, device)
    base_flops, base_params = count_flops(teacher, data.input_size)
    report.update(teacher={"accuracy": t_acc, "flops": base_flops, "params": base_params},
                  machine={"machine": platform.machine(), "torch": torch.__version__, "device": str(device),
                           "threads": torch.get_num_threads()}, date=time.strftime("%Y-%m-%d"))
    print(f"teacher: {t_acc:.2f}% at {base_flops / 1e6:.2f}M FLOPs; {len(data.train)} train images, "
          f"{len(data.test)} test; {joint}+{finetune} epochs")

    done = {(r["method"], r["target"]) for r in report["rows"]}
    for target in args.targets:
        for method in args.methods:
            if (method, target) in done:
                continue
            t0 = time.time()
            if method.startswith("cascade_"):
                run_cfg = copy.deepcopy(cfg)
                run_cfg.cascade.ratios = member_ratios(target, int(method[len("cascade_")]), "paper")
                if method.endswith("_l1init"):
                    run_cfg.cascade.score_init = "l1"
                res = run_prune(run_cfg, workdir / f"{method}_{target}", data=data,
                                teacher=(teacher, t_acc))
                acc, val_acc = res["accuracy"], res["val_accuracy"]
                extra = {"student_after_joint": res["members"][0]["test_acc"]}
                flops, params = res["flops"], res["params"]
            else:
                if method == "l1_kd":  # pretrained weights, L1-selected channels; the cascade's fine-tune recipe
                    student = l1_prune(teacher, (1 - target) * base_flops, data.input_size)
                    recipe = dict(lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                  restart_epochs=cfg.optim.restart_epochs, restart_decay=cfg.optim.restart_decay)
                else:  # random init at a smaller width; the teacher's recipe (from scratch needs a larger lr)
                    student = thinner(cfg, (1 - target) * base_flops, data)
                    recipe = dict(lr=cfg.teacher.lr, weight_decay=cfg.teacher.weight_decay,
                                  restart_epochs=joint + finetune, restart_decay=1.0)
                flops, params = count_flops(student, data.input_size)
                extra = {"start_acc": float(evaluate(prepare(student, device), data.test, device))}
                student = distill(student, teacher, data, cfg, device, epochs=joint + finetune, **recipe)
                acc = float(evaluate(student, data.test, device))
                val_acc = float(evaluate(student, data.val, device))
            row = {"method": method, "target": target, "accuracy": acc, "val_accuracy": val_acc, "flops": flops,
                   "params": params,
                   "flops_reduction": 1 - flops / base_flops, "wall_s": time.time() - t0, **extra}
            print(f"== {method} @ -{target:.0%} FLOPs: {acc:.2f}% at {flops / 1e6:.2f}M "
                  f"(-{row['flops_reduction']:.1%}), {row['wall_s']:.0f}s")
            report["rows"].append(row)
            out.write_text(json.dumps(report, indent=2))
    report["chosen_by_validation"] = chosen_by_validation(report["rows"])
    out.write_text(json.dumps(report, indent=2))
    plot(report, out.with_suffix(".png"))
    print(table(report))
    for target, c in report["chosen_by_validation"].items():
        print(f"-{float(target):.0%} FLOPs: validation chooses {c['method']} (val {c['val_accuracy']:.2f}%), "
              f"test {c['accuracy']:.2f}%")


def chosen_by_validation(rows: list[dict]) -> dict[str, dict]:
    """Per target, the method validation accuracy picks and its test accuracy (rows without a validation
    figure, from older runs, take no part): the unbiased figure when one method is to be chosen."""
    chosen: dict[str, dict] = {}
    for r in rows:
        if r.get("val_accuracy") is None:
            continue
        key = str(r["target"])
        if key not in chosen or r["val_accuracy"] > chosen[key]["val_accuracy"]:
            chosen[key] = {k: r[k] for k in ("method", "val_accuracy", "accuracy", "flops")}
    return chosen


def l1_prune(teacher: nn.Module, max_flops: float, input_size: tuple) -> nn.Module:
    """One-shot L1-magnitude channel pruning with Torch-Pruning: the largest uniform ratio within ``max_flops``."""
    example = torch.zeros(1, *input_size)

    def pruned(ratio: float) -> nn.Module:
        m = copy.deepcopy(teacher).cpu().float().eval()
        for p in m.parameters():
            p.requires_grad_(True)
        if ratio > 0:
            linears = [x for x in m.modules() if isinstance(x, nn.Linear)]  # conv filters only, as the cascade
            tp.pruner.MagnitudePruner(m, example, importance=tp.importance.MagnitudeImportance(p=1),
                                      pruning_ratio=ratio, ignored_layers=linears).step()
        return m

    lo, hi = 0.0, 0.99  # FLOPs fall as the ratio grows: bisect for the smallest ratio within the budget
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
    """Markdown: one row per target, one column per method (accuracy and FLOPs reduction reached)."""
    rows = report["rows"]
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    lines = ["| FLOPs target | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for target in sorted({r["target"] for r in rows}):
        cells = []
        for m in methods:
            r = next((r for r in rows if r["method"] == m and r["target"] == target), None)
            cells.append(f"{r['accuracy']:.2f}% (−{r['flops_reduction']:.1%})" if r else "")
        lines.append(f"| −{target:.0%} | " + " | ".join(cells) + " |")
    t = report["teacher"]
    lines.append(f"\nTeacher (unpruned): {t['accuracy']:.2f}% at {t['flops'] / 1e6:.2f}M FLOPs.")
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for m in METHODS:
        pts = sorted((r["flops"] / 1e6, r["accuracy"]) for r in report["rows"] if r["method"] == m)
        if pts:
            ax.plot(*zip(*pts), marker="o" if m.startswith("cascade") else "s",
                    linestyle="-" if m.startswith("cascade") else "--", label=m)
    t = report["teacher"]
    ax.scatter([t["flops"] / 1e6], [t["accuracy"]], marker="*", s=160, color="k", label="teacher", zorder=3)
    s = report["settings"]
    ax.set(xlabel="FLOPs (M multiply-adds)", ylabel="test accuracy (%)",
           title=f"{s['model']} x{s['width']}, {s['epochs'][0]}+{s['epochs'][1]} epochs ({s['mode']} mode)"
                 + (f"\n{', '.join(s['set'])}" if s.get("set") else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
