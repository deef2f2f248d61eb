"""Quality vs peers, at equal epochs and at equal compute: the cascade (0-3 TAs and ablations) against the
one-shot peers (``method: l1 | group_norm | taylor``, then KD), every row one ``cascade.run_prune`` on the same
split, teacher, augmentation and loss.

    python bench/quality.py --data DIR --teacher A=PATH [--teacher B=PATH] --rows ROW [ROW ...]
                            [--targets 0.83 0.73] [--seeds 0 1 2] [--width 0.25] [--train-subset 10000]
                            [--set KEY=VALUE] [--out bench/quality.json]
    python bench/quality.py --report bench/quality.json      # the tables and the plot again

DIR is an ImageFolder CIFAR-10 (train/, test/). The split is fixed: ``--val-fraction`` of the training images
(split seed 0) held out for selection, the students training on ``--train-subset`` of the rest (the shared
teacher's split: ``../shared/data/teachers/README.md``); test is reported only. A ROW is
``<method>[:<variant>[+<variant>]]@<epochs>``:

- ``cascade_<n>ta@J+F``: the cascade with n TAs at the paper's placement (k0, k0/1.5, k0/2.5, ..., 0), J joint
  and F fine-tune epochs, the FLOPs budget at the target;
- ``l1@E``, ``group_norm@E``, ``taylor@E``: a one-shot peer at the same budget, E epochs of KD in two equal
  phases (the cascade's lr schedule: ``optim.lr_schedule`` applies to both alike);
- variants (``VARIANTS``): config changes for any row (``no_hints``: lambda_H = 0, ...), and two controls for
  peers that need a cascade row of the same teacher, target, seed and total epochs (``CONTROL_SOURCE``):
  ``ta_teacher`` distils from that cascade's exported top TA instead of the pretrained teacher (is the gain
  the method, or a better teacher?), ``cascade_widths`` prunes by L1 to that cascade student's per-layer widths
  (is it the learned allocation, or the training?).

Every row records its test and validation accuracy, FLOPs, its counted training MACs (forward and backward of
every trained model, the frozen teachers' forwards) and its wall time with the machine's load. Rows are saved as
they finish and skipped on a rerun, so an interrupted run resumes; several processes (one per teacher or row
list) may share one ``--out``. The verdict, per target, takes the confirmed rows (more than one run) on the
teachers and seeds they all have, selects on validation and compares on test, twice: at equal epochs, and at
equal compute (the peer row with the least training MACs at or above the cascade's). Writes the JSON, a
markdown table on stdout and the JSON's .png (accuracy vs training MACs).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cascade import CascadeNet, load_prune_config, run_prune  # noqa: E402
from cascade.engine import evaluate, resolve_device  # noqa: E402
from cascade.peers import PEERS, prunable_copy  # noqa: E402
from cascade.teacher import get_teacher  # noqa: E402
from cascade.train import load_prune_data  # noqa: E402
from spaces import member_ratios  # noqa: E402

VARIANTS = {
    "no_hints": ["loss.lambda_h=0"],
    "lr_run": ["optim.lr_schedule=run"],            # one lr schedule over both phases
    "keep_stem": ["cascade.prune_stem=false"],      # the paper's whole stem
    "score_cosine": ["optim.score_schedule=cosine"],
    "shared_own_grads": ["loss.own_grads=shared"],
    "filters_budget": ["cascade.budget=filters"],   # the paper's k: a fraction of the filters
    "taylor_signal": ["cascade.score_signal=taylor"],  # scores from the accumulated |gradient| per FLOP
    "ta_teacher": [],                               # controls: see the module's docstring
    "cascade_widths": [],
}
CONTROL_SOURCE = "cascade_1ta"  # the cascade row a control takes its teacher or widths from


def parse_row(text: str) -> dict:
    """``l1:no_hints+ta_teacher@16`` -> {method, variants, joint, finetune, epochs, name}."""
    spec, _, epochs = text.partition("@")
    method, _, var = spec.partition(":")
    variants = var.split("+") if var else []
    bad = [v for v in variants if v not in VARIANTS]
    if bad or not epochs:
        raise argparse.ArgumentTypeError(f"{text!r}: expected <method>[:<variant>+...]@<epochs> with variants from "
                                         f"{', '.join(VARIANTS)}")
    if method.startswith("cascade_") and method.endswith("ta") and method[8:-2].isdigit():
        if "+" not in epochs:
            raise argparse.ArgumentTypeError(f"{text!r}: a cascade row's epochs are JOINT+FINETUNE, e.g. @8+8")
        joint, finetune = (int(e) for e in epochs.split("+"))
        tas = int(method[8:-2])
        if {"ta_teacher", "cascade_widths"} & set(variants):
            raise argparse.ArgumentTypeError(f"{text!r}: ta_teacher and cascade_widths are peer controls")
    elif method in PEERS:
        total = int(epochs)
        joint, finetune, tas = total - total // 2, total // 2, None
    else:
        raise argparse.ArgumentTypeError(f"{text!r}: unknown method {method!r} (cascade_<n>ta or {', '.join(PEERS)})")
    return {"method": method, "variants": variants, "joint": joint, "finetune": finetune, "tas": tas,
            "epochs": joint + finetune, "name": text}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", help="ImageFolder CIFAR-10 root (train/, test/)")
    ap.add_argument("--teacher", action="append", default=[], metavar="NAME=PATH",
                    help="a teacher checkpoint for the configured model (repeatable: the teacher-variance rows)")
    ap.add_argument("--rows", nargs="+", type=parse_row, default=[])
    ap.add_argument("--targets", type=float, nargs="+", default=[0.83], help="FLOPs fractions removed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--width", type=float, default=0.25)
    ap.add_argument("--train-subset", type=int, default=10_000)
    ap.add_argument("--val-fraction", type=float, default=0.2)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="prune-config override, all rows")
    ap.add_argument("--workdir", default="results/bench_quality", help="run directories (checkpoints, exports)")
    ap.add_argument("--out", default=str(Path(__file__).with_name("quality.json")))
    ap.add_argument("--report", metavar="JSON", help="print the tables and redraw the plot of a saved run")
    return ap


def shared_overrides(args, teacher_path: str, seed: int) -> list[str]:
    """What every row has: the data and its split, the model, the teacher, the seed, the user's --set."""
    return ["data.name=imagefolder", f"data.root={args.data}", f"model.width={args.width}",
            f"data.val_fraction={args.val_fraction}", f"data.train_subset={args.train_subset}", "data.split_seed=0",
            f"teacher.checkpoint={teacher_path}", f"seed={seed}", *args.set]


def run_dir(args, teacher: str, row: dict, target: float, seed: int) -> Path:
    key = hashlib.sha1(json.dumps([args.width, args.train_subset, args.val_fraction, args.set], sort_keys=True)
                       .encode()).hexdigest()[:8]
    return Path(args.workdir) / key / teacher / f"{row['name'].replace(':', '-').replace('@', '_')}_{target}_s{seed}"


def control_source(row: dict) -> dict:
    """The cascade row a peer control reads: one TA, the same total epochs, half of them joint."""
    half = row["epochs"] // 2
    return parse_row(f"{CONTROL_SOURCE}@{row['epochs'] - half}+{half}")


def run_row(args, row: dict, teacher: str, teacher_path: str, target: float, seed: int, data) -> dict:
    overrides = [o for v in row["variants"] for o in VARIANTS[v]]
    overrides += [f"schedule.joint_epochs={row['joint']}", f"schedule.finetune_epochs={row['finetune']}"]
    if row["tas"] is not None:
        overrides += ["method=cascade", f"cascade.ratios={member_ratios(target, row['tas'], 'paper')}"]
    else:
        overrides += [f"method={row['method']}", f"cascade.ratios=[{target}]"]
    cfg = load_prune_config(None, shared_overrides(args, teacher_path, seed) + overrides)
    device = resolve_device(cfg.device)
    t_model, t_acc = get_teacher(cfg, data, device, log=lambda s: None)
    kw = {}
    if "ta_teacher" in row["variants"] or "cascade_widths" in row["variants"]:
        src = run_dir(args, teacher, control_source(row), target, seed)
        if not (src / "result.json").exists():
            raise SystemExit(f"{row['name']} needs the row {control_source(row)['name']} (same teacher, target, "
                             f"seed) first: put it earlier in --rows")
        if "ta_teacher" in row["variants"]:
            ta = torch.load(src / "members" / "m1.pt", weights_only=False).to(device).eval().requires_grad_(False)
            t_model, t_acc = ta, float(evaluate(ta, data.test, device))
        if "cascade_widths" in row["variants"]:
            kw["peer_scores"] = widths_scores(t_model, json.loads((src / "result.json").read_text())["kept_channels"],
                                              data.input_size)
    t0, out = time.time(), run_dir(args, teacher, row, target, seed)
    r = run_prune(cfg, out, data=data, teacher=(t_model, t_acc), log=lambda s: None, **kw)
    joint = [h for h in r["history"] if h["phase"] == "joint"]
    extra = {}
    if joint:
        last = joint[-1]
        extra = {"members_after_joint": [m["val_acc"] for m in r["members"]],
                 "churn_per_epoch": [h["churn/m0"] for h in joint],
                 "mask_jaccard_start": last.get("mask_jaccard_start/m0"),
                 "score_spearman_start": last.get("score_spearman_start/m0"),
                 "grad_log10_snr": [h.get("grad_log10_snr/m0") for h in joint]}
    return {"teacher": teacher, "row": row["name"], "method": row["method"], "variants": row["variants"],
            "epochs": row["epochs"], "target": target, "seed": seed, "accuracy": r["accuracy"],
            "val_accuracy": r["val_accuracy"], "flops": r["flops"], "params": r["params"],
            "flops_reduction": r["flops_reduction"], "train_macs": r["train_macs"], "eval_macs": r["eval_macs"],
            "wall_s": time.time() - t0, "load_avg": os.getloadavg()[0], "teacher_accuracy": t_acc,
            "kept_channels": r["kept_channels"], **extra}


def widths_scores(model: torch.nn.Module, kept: dict[str, int], input_size) -> torch.Tensor:
    """Scores that make the L1 peer keep ``kept[root]`` filters of each group, its largest-L1 ones: each
    group's L1 rank, plus 2 for the filters to keep (ranks are in (0, 1]), so the global threshold takes those
    first and the FLOPs budget fills with the next best."""
    model = prunable_copy(model).cpu()
    net = CascadeNet(model, [0.5], torch.zeros(1, *input_size))
    scores = []
    for g in net.groups:
        l1 = model.get_submodule(g.root).weight.detach().abs().flatten(1).sum(1)
        rank = (l1.argsort().argsort().float() + 1) / g.size
        rank[l1.topk(min(g.size, kept[g.root])).indices] += 2.0
        scores.append(rank)
    return torch.cat(scores)


# ---------------------------------------------------------------- the report
def summarize(rows: list[dict]) -> list[dict]:
    """Per (target, row): mean and std over every teacher and seed (the spread includes the teachers')."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["row"]), []).append(r)
    out = []
    for (target, name), rs in sorted(groups.items()):
        def stat(k):
            vals = [r[k] for r in rs]
            return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0
        (acc, sd), (val, val_sd) = stat("accuracy"), stat("val_accuracy")
        out.append({"target": target, "row": name, "method": rs[0]["method"], "variants": rs[0]["variants"],
                    "epochs": rs[0]["epochs"], "runs": len(rs), "teachers": sorted({r["teacher"] for r in rs}),
                    "accuracy": acc, "accuracy_std": sd, "val_accuracy": val, "val_accuracy_std": val_sd,
                    "flops": statistics.fmean(r["flops"] for r in rs),
                    "train_macs": statistics.fmean(r["train_macs"] for r in rs),
                    "wall_s": statistics.fmean(r["wall_s"] for r in rs),
                    "load_avg": max(r["load_avg"] for r in rs)})
    return out


CONTROLS = ("ta_teacher", "cascade_widths")  # rows that take part of a cascade run: controls, not competitors


def is_cascade(s: dict) -> bool:
    return s["method"].startswith("cascade_")


def is_peer(s: dict) -> bool:
    return not is_cascade(s) and not set(s["variants"]) & set(CONTROLS)


def comparable(rows: list[dict]) -> list[dict]:
    """The rows a verdict compares, per target: confirmed ones (run with more than one teacher or seed; a one-run
    screen row never competes) on one set of runs (teacher, seed), so means over the same teachers and seeds are
    compared (teacher B's students are better for every method). The set is the largest that a cascade row and a
    peer row both have; a confirmed row missing any of them sits the verdict out (listed, not compared)."""
    out = []
    for target in sorted({r["target"] for r in rows}):
        here = [r for r in rows if r["target"] == target]
        runs: dict[str, set] = {}
        for r in here:
            runs.setdefault(r["row"], set()).add((r["teacher"], r["seed"]))
        confirmed = {name: rs for name, rs in runs.items() if len(rs) > 1}
        kind = {r["row"]: "cascade" if is_cascade(r) else "peer" if is_peer(r) else "control" for r in here}

        def members(common):  # the confirmed rows that have every run of the set
            return [name for name, rs in confirmed.items() if common <= rs]

        candidates = [rs for rs in confirmed.values() if {"cascade", "peer"} <= {kind[n] for n in members(rs)}]
        if not candidates:
            continue
        common = max(candidates, key=lambda rs: (len(rs), len(members(rs)), sorted(rs)))
        keep = set(members(common))
        out += [r for r in here if r["row"] in keep and (r["teacher"], r["seed"]) in common]
    return out


def verdict(summary: list[dict]) -> dict[str, dict]:
    """Per target, among the rows with the most runs (controls never compete): at each epoch count with both,
    the validation-best cascade against the validation-best peer; at equal compute, the validation-best cascade
    against the validation-best peer among, per peer family (method + variants), its cheapest row with at least
    the cascade's training MACs; and within its compute, against the validation-best peer row that spent at
    most the cascade's MACs (a peer ahead there beats the cascade at less cost)."""
    out = {}
    for target in sorted({s["target"] for s in summary}):
        rows = [s for s in summary if s["target"] == target]
        runs = max(s["runs"] for s in rows)
        rows = [s for s in rows if s["runs"] == runs]
        v = {"runs_per_row": runs, "equal_epochs": []}
        best = lambda ss: max(ss, key=lambda s: s["val_accuracy"])  # noqa: E731
        for e in sorted({s["epochs"] for s in rows}):
            c = [s for s in rows if s["epochs"] == e and is_cascade(s)]
            p = [s for s in rows if s["epochs"] == e and is_peer(s)]
            if c and p:
                bc, bp = best(c), best(p)
                v["equal_epochs"].append({"epochs": e, "cascade": bc["row"], "peer": bp["row"],
                                          "cascade_accuracy": bc["accuracy"], "peer_accuracy": bp["accuracy"],
                                          "gap": bc["accuracy"] - bp["accuracy"],
                                          "macs_ratio": bc["train_macs"] / bp["train_macs"]})
        cascades = [s for s in rows if is_cascade(s)]
        if cascades:
            bc = best(cascades)
            families: dict[tuple, list[dict]] = {}
            for s in rows:
                if is_peer(s) and s["train_macs"] >= bc["train_macs"]:
                    families.setdefault((s["method"], tuple(s["variants"])), []).append(s)
            cheapest = [min(f, key=lambda s: s["train_macs"]) for f in families.values()]
            if cheapest:
                bp = best(cheapest)
                v["equal_compute"] = {"cascade": bc["row"], "peer": bp["row"], "cascade_accuracy": bc["accuracy"],
                                      "peer_accuracy": bp["accuracy"], "gap": bc["accuracy"] - bp["accuracy"],
                                      "cascade_macs": bc["train_macs"], "peer_macs": bp["train_macs"]}
            within = [s for s in rows if is_peer(s) and s["train_macs"] <= bc["train_macs"]]
            if within:
                bp = best(within)
                v["within_compute"] = {"cascade": bc["row"], "peer": bp["row"], "cascade_accuracy": bc["accuracy"],
                                       "peer_accuracy": bp["accuracy"], "gap": bc["accuracy"] - bp["accuracy"],
                                       "cascade_macs": bc["train_macs"], "peer_macs": bp["train_macs"]}
        out[str(target)] = v
    return out


def paired(rows: list[dict], target: float, a: str, b: str, runs: list[str]) -> str:
    """The gap a - b run by run (``runs``: teacher and seed, ``A0``), paired (the spread the means hide)."""
    acc = {(r["row"], r["teacher"], r["seed"]): r["accuracy"] for r in rows
           if r["target"] == target and f"{r['teacher']}{r['seed']}" in runs}
    pairs = sorted((t, s) for (row, t, s) in acc if row == a and (b, t, s) in acc)
    return "; per run: " + ", ".join(f"{t}{s} {acc[(a, t, s)] - acc[(b, t, s)]:+.2f}" for t, s in pairs) if pairs else ""


def table(report: dict) -> str:
    lines = []
    for target in sorted({s["target"] for s in report["summary"]}):
        rows = sorted((s for s in report["summary"] if s["target"] == target), key=lambda s: -s["accuracy"])
        lines += [f"\n−{target:.0%} FLOPs", "", "| row | runs | test % (mean ± std) | val % | MFLOPs | train TMACs "
                  "| wall s (max load) |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {s['row']} | {s['runs']} | {s['accuracy']:.2f} ± {s['accuracy_std']:.2f} | "
                  f"{s['val_accuracy']:.2f} | {s['flops'] / 1e6:.2f} | {s['train_macs'] / 1e12:.2f} | "
                  f"{s['wall_s']:.0f} ({s['load_avg']:.1f}) |" for s in rows]
        v = report["verdict"].get(str(target), {})
        if v:
            lines.append(f"\nThe verdict compares the rows run on every one of {', '.join(v['runs'])} (teacher and "
                         f"seed), selected on validation, on test:")
        for e in v.get("equal_epochs", []):
            lines.append(f"\nEqual epochs ({e['epochs']}): {e['cascade']} {e['cascade_accuracy']:.2f} vs {e['peer']} "
                         f"{e['peer_accuracy']:.2f}: {e['gap']:+.2f} points, at {e['macs_ratio']:.1f}x the peer's MACs"
                         + paired(report["rows"], target, e["cascade"], e["peer"], v["runs"]))
        for key, label in (("equal_compute", "Equal compute"), ("within_compute", "Within the cascade's compute")):
            if key in v:
                e = v[key]
                lines.append(f"\n{label}: {e['cascade']} {e['cascade_accuracy']:.2f} "
                             f"({e['cascade_macs'] / 1e12:.2f} TMACs) vs {e['peer']} {e['peer_accuracy']:.2f} "
                             f"({e['peer_macs'] / 1e12:.2f} TMACs): {e['gap']:+.2f} points"
                             + paired(report["rows"], target, e["cascade"], e["peer"], v["runs"]))
    t = report["teachers"]
    lines.append("\nTeachers: " + ", ".join(f"{k} {v['test_accuracy']:.2f}% test / {v['val_accuracy']:.2f}% val"
                                           for k, v in t.items()))
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Per target: test accuracy against training MACs, one line per row family over its budgets."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({s["target"] for s in report["summary"]})
    fig, axes = plt.subplots(1, len(targets), figsize=(7 * len(targets), 4.8), squeeze=False)
    # one colour per row family in every panel: the cascades blue to purple, the peers orange to olive
    names = sorted({s["row"].split("@")[0] for s in report["summary"]})
    cascades, peers = [n for n in names if n.startswith("cascade_")], [n for n in names if not n.startswith("cascade_")]
    colour = {**{n: plt.cm.winter(i / max(1, len(cascades) - 1)) for i, n in enumerate(cascades)},
              **{n: plt.cm.autumn(0.85 * i / max(1, len(peers) - 1)) for i, n in enumerate(peers)}}
    for ax, target in zip(axes[0], targets):
        fams: dict[str, list[dict]] = {}
        for s in report["summary"]:
            if s["target"] == target:
                fams.setdefault(s["row"].split("@")[0], []).append(s)
        for fam, ss in sorted(fams.items()):
            ss.sort(key=lambda s: s["train_macs"])
            cascade = fam.startswith("cascade_")
            ax.errorbar([s["train_macs"] / 1e12 for s in ss], [s["accuracy"] for s in ss],
                        yerr=[s["accuracy_std"] for s in ss], marker="o" if cascade else "s", capsize=3,
                        linestyle="-" if ":" not in fam else "--", label=fam, color=colour[fam],
                        linewidth=2.2 if fam in ("cascade_2ta", "l1") else 1.0)  # the default, the best peer
            for s in ss:
                ax.annotate(f"{s['epochs']}" + (f" ×{s['runs']}" if s["runs"] > 1 else ""),
                            (s["train_macs"] / 1e12, s["accuracy"]), fontsize=6, textcoords="offset points",
                            xytext=(3, 3))
        ax.set(xscale="log", xlabel="training TMACs (counted; labels: epochs, × runs where more than one)",
               ylabel="test accuracy (%, mean ± std over teachers and seeds)",
               title=f"-{target:.0%} FLOPs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    s = report["settings"]
    fig.suptitle(f"VGG16-CIFAR x{s['width']}, {s['train_subset']} training images; teachers "
                 + ", ".join(f"{k} {v['test_accuracy']:.1f}%" for k, v in report["teachers"].items()), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def conclude(report: dict) -> None:
    report["summary"] = summarize(report["rows"])
    rows = comparable(report["rows"])
    report["verdict"] = verdict(summarize(rows))
    for target, v in report["verdict"].items():
        v["runs"] = sorted({f"{r['teacher']}{r['seed']}" for r in rows if str(r["target"]) == target})


def show(report: dict, out: Path) -> None:
    plot(report, out.with_suffix(".png"))
    print(table(report))


def _key(r: dict) -> tuple:
    return r["teacher"], r["row"], r["target"], r["seed"]


def _add_row(rows: list[dict], row: dict) -> None:
    if _key(row) not in {_key(x) for x in rows}:  # two processes that both ran it keep one
        rows.append(row)


def _write(out: Path, report: dict) -> None:
    tmp = out.with_name(out.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(report, indent=2))
    tmp.replace(out)  # atomic: a reader never sees half a file


def merge_saved(out: Path, settings: dict, update=None) -> dict:
    """Read ``out`` under a lock, apply ``update(report)`` and write it back (no ``update``: only read it):
    several processes (one per teacher, say: the 2 cores run two rows at a time) share one JSON without losing
    each other's rows. A file of other settings is refused, not overwritten."""
    import fcntl

    with open(out.with_name(out.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        report = json.loads(out.read_text()) if out.exists() else {"settings": settings, "rows": [], "teachers": {}}
        theirs = report.get("settings", {})
        if theirs != settings:
            diff = ", ".join(f"{k}: {theirs.get(k)!r} there, {v!r} here" for k, v in settings.items()
                             if theirs.get(k) != v)
            raise SystemExit(f"{out} holds rows of other settings ({diff}): pass another --out")
        if update:
            update(report)
            _write(out, report)
        return report


def main() -> None:
    args = parser().parse_args()
    if args.report:
        out = Path(args.report)
        report = json.loads(out.read_text())
        conclude(report)
        _write(out, report)
        return show(report, out)
    if not (args.data and args.teacher and args.rows):
        parser().error("--data, --teacher and --rows are needed (or --report)")
    teachers = dict(t.split("=", 1) for t in args.teacher)
    out = Path(args.out)
    settings = {"width": args.width, "train_subset": args.train_subset, "val_fraction": args.val_fraction,
                "set": args.set, "data": Path(args.data).resolve().name}
    merge_saved(out, settings)  # other settings: refused before any work
    device = resolve_device("auto")
    data = load_prune_data(load_prune_config(None, shared_overrides(args, next(iter(teachers.values())), 0)))
    measured = {}
    for name, path in teachers.items():
        model, acc = get_teacher(load_prune_config(None, shared_overrides(args, path, 0)), data, device,
                                 log=lambda s: None)
        measured[name] = {"path": path, "test_accuracy": acc, "val_accuracy": float(evaluate(model, data.val, device)),
                          "sha256": hashlib.sha256(Path(path).read_bytes()).hexdigest()}

    def add_teachers(report):
        for name, now in measured.items():  # a name's rows must all come from one teacher
            was = report["teachers"].get(name)
            old = was and (was.get("sha256", now["sha256"]), was["test_accuracy"])  # no hash saved: accuracy decides
            if old and old != (now["sha256"], now["test_accuracy"]):
                raise SystemExit(f"--teacher {name}={now['path']} is not the teacher {name} of {out}'s rows "
                                 f"({was['path']}, test {was['test_accuracy']:.2f}%): give it another name")
        report["teachers"].update(measured)
        report["machine"] = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                             "device": str(device), "threads": torch.get_num_threads()}
    merge_saved(out, settings, add_teachers)
    print(f"{len(data.train)} training, {len(data.val)} validation, {len(data.test)} test images; teachers "
          + ", ".join(f"{k} {v['test_accuracy']:.2f}%" for k, v in measured.items()), flush=True)
    try:
        for seed in args.seeds:
            for target in args.targets:
                for name, path in teachers.items():
                    for row in args.rows:
                        # read afresh: another process sharing --out may have run this row meanwhile
                        saved = merge_saved(out, settings)["rows"]
                        if (name, row["name"], target, seed) in {_key(x) for x in saved}:
                            continue
                        r = run_row(args, row, name, path, target, seed, data)
                        merge_saved(out, settings, lambda rep: _add_row(rep["rows"], r))
                        print(f"== {name} {row['name']} -{target:.0%} s{seed}: test {r['accuracy']:.2f} val "
                              f"{r['val_accuracy']:.2f} at {r['flops'] / 1e6:.2f}M, {r['train_macs'] / 1e12:.2f} "
                              f"TMACs, {r['wall_s']:.0f}s (load {r['load_avg']:.1f})", flush=True)
    finally:
        report = merge_saved(out, settings, conclude)
        if report["rows"]:
            show(report, out)


if __name__ == "__main__":
    main()
