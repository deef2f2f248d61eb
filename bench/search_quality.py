"""Search quality per unit of compute: which search finds the best accuracy-vs-FLOPs frontier for the same
counted training MACs.

    python bench/search_quality.py [--mode cpu|gpu] [--seeds 0 1 2] [--out bench/search_quality.json]
    python bench/search_quality.py --mode cifar --data DIR --teacher PATH   # CIFAR-10 on CPU cores
    python bench/search_quality.py --smoke         # the suite's check: one seed, two trials a search
    python bench/search_quality.py --report bench/search_quality.json

Each variant is a real ``run_search`` (local Ray, MLflow in SQLite) from one shared teacher and split: in
``cpu`` mode the quickstart's (digits, a teacher trained once and cached), in ``cifar`` and ``gpu`` modes the
converged VGG16 x0.25 CIFAR-10 teacher and its split (``cifar``: 5,000 training images, 2 + 2 epochs a trial):

- ``family``: the cascade search over the shipped space, every member (student and TAs) a frontier point;
- ``family_all``: ``family`` with ``schedule.fine_tune: all`` (every TA fine-tuned too, at its own cost);
- ``family_2ta``: ``family_all`` with two TAs in every trial, so each has a pruned TA (``family``'s 0-2 TAs give
  most trials only the unpruned one);
- ``students``, ``students_2ta``: ``family``'s and ``family_2ta``'s searches scored on their students alone (the
  TAs dropped: the same runs, so the difference is what the family points add);
- ``peers``: a search over the one-shot peers (method, ratio, tau, lambda_KD, lr);
- ``mixed``: the cascade space with ``method`` a choice among the cascade and the peers;
- ``grid``: the one-TA cascade (its other settings default) at evenly spaced ratios, the grid sampler;
- ``pareto``: ``family`` with the pareto successive-halving scheduler (stopped trials cost their partial epochs).

Every search records its hypervolume against its cumulative training compute as trials end (``curve.json``).
The comparison is at one compute budget: the least total any variant spent, each variant read at the last
point of its curve within it. Reported per variant (mean ± std over seeds): the test hypervolume of the
validation-chosen frontier (one reference point: the teacher's FLOPs, chance accuracy), the number of frontier
points, and for ``pareto`` the compute it needed to reach ``family``'s final test hypervolume. Rows are saved as
they finish; a rerun skips them. Writes the JSON and its .png (the curves).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]
SEARCH = {  # per mode: what every variant shares
    "cpu": {"config": ROOT / "configs" / "smoke.yaml", "trials": 8, "concurrency": 2,
            "prune": {"prune.schedule.joint_epochs": 2, "prune.schedule.finetune_epochs": 2}},
    "cifar": {"config": ROOT / "configs" / "cifar10_vgg16.yaml", "trials": 8, "concurrency": 2,
              "prune": {"prune.schedule.joint_epochs": 2, "prune.schedule.finetune_epochs": 2,
                        "prune.data.train_subset": 5000, "prune.device": "cpu", "resources": {"cpu": 1, "gpu": 0},
                        "sampler.n_startup_trials": 2}},
    "gpu": {"config": ROOT / "configs" / "cifar10_vgg16.yaml", "trials": 32, "concurrency": 8,
            "prune": {"prune.schedule.joint_epochs": 8, "prune.schedule.finetune_epochs": 8}},
}
TEACHER_SPLIT = {"prune.model.width": 0.25, "prune.data.name": "imagefolder", "prune.data.val_fraction": 0.2,
                 "prune.data.split_seed": 0}  # the shared converged teacher's model and split (its README)
PEER_SPACE = {"method": {"choices": ["l1", "group_norm", "taylor"]}, "student_ratio": {"low": 0.3, "high": 0.8},
              "tau": {"low": 2.0, "high": 16.0, "log": True}, "lambda_kd": {"low": 0.2, "high": 0.9},
              "lr": {"low": 0.004, "high": 0.04, "log": True}}
GRID_RATIOS = [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
VARIANTS = ("family", "family_all", "family_2ta", "peers", "mixed", "grid", "pareto")
STUDENTS = {"students": "family", "students_2ta": "family_2ta"}  # views: the same runs, students only


def overrides(variant: str, mode: str, trials: int) -> dict:
    """The variant's changes to the shared search config (peers are cheaper a trial: twice the trials)."""
    out = {**SEARCH[mode]["prune"], "num_trials": trials, "space.method": {"choices": ["cascade"]}}
    if variant == "peers":
        out.update(num_trials=2 * trials, space=PEER_SPACE)
    elif variant in ("family_all", "family_2ta"):
        out["prune.schedule.fine_tune"] = "all"
        if variant == "family_2ta":
            out["space.num_tas"] = 2
    elif variant == "mixed":
        out.update({"num_trials": trials + trials // 2, "space.method": {"choices": ["cascade", "l1", "taylor"]}})
    elif variant == "grid":
        out.update({"num_trials": len(GRID_RATIOS), "sampler.name": "grid",
                    "space": {"num_tas": 1, "student_ratio": {"choices": GRID_RATIOS}}})
    elif variant == "pareto":
        out.update({"num_trials": trials + trials // 2, "scheduler.name": "pareto", "scheduler.grace_period": 1,
                    "scheduler.reduction_factor": 2})
    return out


def run_variant(variant: str, seed: int, args) -> dict:
    from search import run_search

    s = SEARCH[args.mode]
    ov = overrides(variant, args.mode, args.trials or s["trials"])
    if args.mode != "cpu":  # CIFAR-10: the converged teacher and the data it was trained on
        ov.update({**TEACHER_SPLIT, "prune.data.root": str(Path(args.data).resolve()),
                   "prune.teacher.checkpoint": str(Path(args.teacher).resolve())})
    ov.update({"experiment": f"{variant}_s{seed}", "seed": seed, "results_dir": str(Path(args.workdir) / "results"),
               "storage": str(Path(args.workdir) / "storage"), "concurrency": s["concurrency"]})
    t0 = time.time()
    result = run_search(s["config"], ov)
    curve = json.loads((result.run_dir / "curve.json").read_text())
    return {"variant": variant, "seed": seed, "wall_s": time.time() - t0, "curve": curve,
            "trials": len(result.trials), "finished": len(result.finished), "frontier_points": len(result.frontier),
            "stopped": sum(t.status == "stopped" for t in result.trials)}


def at_budget(curve: list[dict], budget: float, key: str) -> tuple[float, int]:
    """The curve's value of ``key`` at the last point within ``budget`` TMACs (0 before any), and its index."""
    within = [i for i, c in enumerate(curve) if c["train_tmacs"] <= budget * (1 + 1e-9)]
    if not within:
        return 0.0, -1
    return curve[within[-1]][key] or 0.0, within[-1]


def summarize(rows: list[dict]) -> dict:
    """Per variant at the common budget (the least total spent by any row): test hypervolume mean ± std; for
    pareto, the compute it took to reach family's final test hypervolume, as a fraction of family's."""
    budget = min(r["curve"][-1]["train_tmacs"] for r in rows)
    out: dict = {"budget_tmacs": budget, "variants": {}}
    views = [(v, v, "test_hypervolume") for v in VARIANTS] + [(s, v, "student_test_hypervolume")
                                                                for s, v in STUDENTS.items()]
    for name, variant, key in views:
        vals = [at_budget(r["curve"], budget, key)[0] for r in rows if r["variant"] == variant]
        points = [r["frontier_points"] for r in rows if r["variant"] == variant and "frontier_points" in r]
        final = [(r["curve"][-1][key] or 0.0, r["curve"][-1]["train_tmacs"]) for r in rows if r["variant"] == variant]
        if vals:
            out["variants"][name] = {"test_hypervolume": statistics.fmean(vals), "std": statistics.stdev(vals)
                                     if len(vals) > 1 else 0.0, "seeds": len(vals),
                                     "frontier_points": statistics.fmean(points) if points and name not in STUDENTS
                                     else None,
                                     "final_test_hypervolume": statistics.fmean(h for h, _ in final),
                                     "final_tmacs": statistics.fmean(c for _, c in final)}
    reach = []
    for r in (r for r in rows if r["variant"] == "pareto"):
        fam = next((f for f in rows if f["variant"] == "family" and f["seed"] == r["seed"]), None)
        if fam:
            target, spent = fam["curve"][-1]["test_hypervolume"] or 0.0, fam["curve"][-1]["train_tmacs"]
            hit = next((c["train_tmacs"] for c in r["curve"] if (c["test_hypervolume"] or 0) >= target), None)
            reach.append(None if hit is None else hit / spent)
    if reach:
        out["pareto_compute_to_reach_family"] = reach
    return out


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    """The seeds' mean test hypervolume at each compute any of them reached, up to the least total among them
    (so every seed counts at every point)."""
    end = min(c[-1]["train_tmacs"] for c in curves)
    steps = sorted({p["train_tmacs"] for c in curves for p in c if p["train_tmacs"] <= end})
    return [{"train_tmacs": x, "test_hypervolume": statistics.fmean(at_budget(c, x, "test_hypervolume")[0]
                                                                    for c in curves)} for x in steps]


def plot(report: dict, path: Path) -> None:
    from search.frontier import plot_curve

    variants = [v for v in VARIANTS if any(r["variant"] == v for r in report["rows"])]
    curves = {v: mean_curve([r["curve"] for r in report["rows"] if r["variant"] == v]) for v in variants}
    seeds = len({r["seed"] for r in report["rows"]})
    plot_curve(curves, path, key="test_hypervolume", ylabel="test hypervolume (frontier chosen on validation)",
               title=f"mean over {seeds} search seeds, to the least compute any seed spent")


def table(report: dict) -> str:
    s = report["summary"]
    lines = [f"At {s['budget_tmacs']:.2f} TMACs of training each:", "",
             "| search | test hypervolume (mean ± std) | seeds | whole search: test hypervolume | its TMACs "
             "| frontier points |", "|---|---|---|---|---|---|"]
    for name, v in sorted(s["variants"].items(), key=lambda kv: -kv[1]["test_hypervolume"]):
        pts = "" if v.get("frontier_points") is None else f"{v['frontier_points']:.1f}"
        lines.append(f"| {name} | {v['test_hypervolume']:.4f} ± {v['std']:.4f} | {v['seeds']} | "
                     f"{v['final_test_hypervolume']:.4f} | {v['final_tmacs']:.2f} | {pts} |")
    if "pareto_compute_to_reach_family" in s:
        lines.append("\npareto reached family's final test hypervolume with "
                     + ", ".join("never" if x is None else f"{x:.0%}" for x in s["pareto_compute_to_reach_family"])
                     + " of family's compute (per seed)")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=sorted(SEARCH), default="cpu")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--data", help="cifar and gpu modes: the extracted cifar10-jpg folder")
    ap.add_argument("--teacher", help="cifar and gpu modes: the converged VGG16 x0.25 teacher "
                                      "(../shared/data/teachers/README.md)")
    ap.add_argument("--trials", type=int, help="a cascade search's trials (the others scale from it)")
    ap.add_argument("--workdir", default="results/bench_search")
    ap.add_argument("--out", default=str(Path(__file__).with_name("search_quality.json")))
    ap.add_argument("--smoke", action="store_true", help="one seed, two trials a cascade search")
    ap.add_argument("--report", metavar="JSON")
    args = ap.parse_args()
    if args.report:
        out = Path(args.report)
        report = json.loads(out.read_text())
        return finish(report, out)
    if args.mode != "cpu" and not (args.data and args.teacher):
        ap.error(f"--mode {args.mode} needs --data and --teacher")
    if args.smoke:
        args.seeds, args.trials = args.seeds[:1], 2
    out = Path(args.out)
    settings = {"mode": args.mode, "trials": args.trials}
    if args.teacher:  # the weights, as bench/quality.py records them: another file under the same name starts anew
        settings["teacher_sha256"] = hashlib.sha256(Path(args.teacher).read_bytes()).hexdigest()
    report = json.loads(out.read_text()) if out.exists() else {}
    if report.get("settings") != settings:
        report = {"settings": settings, "rows": []}
    done = {(r["variant"], r["seed"]) for r in report["rows"]}
    try:
        for seed in args.seeds:
            for variant in args.variants:
                if (variant, seed) in done:
                    continue
                row = run_variant(variant, seed, args)
                report["rows"].append(row)
                out.write_text(json.dumps(report, indent=1))
                print(f"== {variant} seed {seed}: {row['finished']} of {row['trials']} finished, "
                      f"{row['curve'][-1]['train_tmacs']:.2f} TMACs, test hypervolume "
                      f"{row['curve'][-1]['test_hypervolume'] or 0:.4f}", flush=True)
    finally:
        if report["rows"]:
            finish(report, out)


def finish(report: dict, out: Path) -> None:
    report["summary"] = summarize(report["rows"])
    out.write_text(json.dumps(report, indent=1))
    plot(report, out.with_suffix(".png"))
    print(table(report))


if __name__ == "__main__":
    main()
