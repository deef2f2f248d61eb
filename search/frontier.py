"""The Pareto frontier of finished trials (selected on validation accuracy): the non-dominated set, its
hypervolume, table, CSV and plot. Test accuracy is shown beside validation, never used to select."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

from .record import TrialRecord, members

__all__ = ["pareto_front", "frontier_records", "hypervolume", "write_csv", "plot_frontier", "plot_curve", "format_table",
           "best_at_budgets", "best_within", "PAPER_POINTS"]

# VGG16 on CIFAR-10 in the paper (FLOPs, top-1 %): base 93.25% at 313M, then k_0 = 0.3, 0.6, 0.8.
PAPER_POINTS = [(134e6, 93.53), (83e6, 93.32), (52e6, 92.97)]


def pareto_front(points: Sequence[Sequence[float]], modes: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points. ``modes[j]`` is 'max' or 'min' for objective j.

    a dominates b when a is at least as good in every objective and strictly better in one; equal
    points do not dominate each other, so duplicates on the frontier are all kept.
    """
    sign = [1.0 if m == "max" else -1.0 for m in modes]
    vals = [[s * float(v) for s, v in zip(sign, p)] for p in points]

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))

    return [i for i, p in enumerate(vals) if not any(dominates(q, p) for j, q in enumerate(vals) if j != i)]


def frontier_records(trials: list[TrialRecord], objectives: dict[str, str]) -> list[TrialRecord]:
    """Finished, full-budget trials on the frontier of the objectives, sorted by FLOPs."""
    done = [t for t in trials if t.finished]
    keys = list(objectives)
    idx = pareto_front([[getattr(t, k) for k in keys] for t in done], [objectives[k] for k in keys])
    return sorted((done[i] for i in idx), key=lambda t: (t.flops, -t.val_accuracy))


def hypervolume(trials: list[TrialRecord], *, on: str = "val_accuracy") -> float | None:
    """The area the finished trials dominate in (FLOPs, validation accuracy) above the reference point
    (the teacher's FLOPs, chance accuracy), as a fraction of the box up to 0 FLOPs and 100%: one number
    per search, larger is better. None before any trial finishes. ``on="test_accuracy"``: the frontier chosen
    on validation, its area measured on test (what a search's choice is worth on unseen data)."""
    done = [t for t in trials if t.finished]
    if not done:
        return None
    if on != "val_accuracy":
        done = frontier_records(done, {"val_accuracy": "max", "flops": "min"})
    ref_flops, chance = done[0].base_flops, 100.0 / (done[0].num_classes or 1)
    pts = sorted((t.flops, getattr(t, on)) for t in done if t.flops < ref_flops and getattr(t, on) > chance)
    area, best = 0.0, chance
    for i, (f, a) in enumerate(pts):
        best = max(best, a)
        nxt = pts[i + 1][0] if i + 1 < len(pts) else ref_flops
        area += (nxt - f) * (best - chance)
    return area / (ref_flops * (100.0 - chance))


def best_within(trials: list[TrialRecord], *, max_flops: float | None = None,
                max_params: float | None = None) -> TrialRecord | None:
    """The finished trial with the best validation accuracy within the budgets (None where nothing fits)."""
    fits = [t for t in trials if t.finished and (max_flops is None or t.flops <= max_flops)
            and (max_params is None or t.params <= max_params)]
    return max(fits, key=lambda t: t.val_accuracy) if fits else None


def best_at_budgets(trials: list[TrialRecord], budgets: Sequence[float]) -> list[TrialRecord | None]:
    """For each FLOPs budget, the finished trial with the best validation accuracy within it."""
    return [best_within(trials, max_flops=b) for b in budgets]


COLUMNS = ["name", "member", "ratio", "fine_tuned", "val_accuracy", "test_accuracy", "flops", "params",
           "flops_reduction", "params_reduction", "train_macs", "mlflow_run_id", "model_uri"]


def _row(t: TrialRecord) -> dict[str, Any]:
    return {**{c: getattr(t, c) for c in COLUMNS}, **{f"hp.{k}": v for k, v in sorted(t.config.items())}}


def write_csv(records: list[TrialRecord], path: str | Path) -> None:
    rows = [_row(t) for t in records]
    fields = list(dict.fromkeys(k for r in rows for k in r)) or COLUMNS
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def format_table(records: list[TrialRecord]) -> str:
    """A fixed-width table: validation and test accuracy, FLOPs, params, reductions, the TA ladder, the run."""
    head = (f"{'trial / member':<20} {'val %':>6} {'test %':>6} {'FLOPs':>9} {'params':>9} {'-FLOPs':>7} "
            f"{'-params':>8}  {'ratios':<24} run id")
    lines = [head, "-" * len(head)]
    for t in records:
        ratios = ",".join(f"{t.config[k]:.2f}" for k in sorted(t.config) if k.startswith("ratio_m"))
        lines.append(f"{t.name or t.trial_id:<20} {t.val_accuracy:6.2f} {t.test_accuracy:6.2f} "
                     f"{t.flops / 1e6:8.2f}M {t.params / 1e6:8.3f}M {t.flops_reduction:7.1%} "
                     f"{t.params_reduction:8.1%}  {ratios:<24} {t.mlflow_run_id or ''}")
    return "\n".join(lines)


def plot_frontier(trials: list[TrialRecord], frontier: list[TrialRecord], path: str | Path, *, title: str = "",
                  teacher: tuple[float, float] | None = None, paper: bool = False) -> None:
    """Validation accuracy vs FLOPs: every finished trial, the frontier (chosen on validation) with its test
    accuracy beside it, the teacher, the paper's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t.finished]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    points = members(done)
    for t in done:  # one trial's members, a family: its student and TAs joined
        family = sorted((p for p in points if p.trial_id == t.trial_id and p.ratio), key=lambda p: p.flops)
        if len(family) > 1:
            ax.plot([p.flops / 1e6 for p in family], [p.val_accuracy for p in family], c="0.8", lw=0.8, zorder=1)
    ax.scatter([t.flops / 1e6 for t in points], [t.val_accuracy for t in points], s=22, c="0.6",
               label="trials' students and TAs (val)")
    if frontier:
        x = [t.flops / 1e6 for t in frontier]
        ax.step(x, [t.val_accuracy for t in frontier], where="post", c="tab:red", lw=1.5)
        ax.scatter(x, [t.val_accuracy for t in frontier], s=40, c="tab:red", zorder=3,
                   label="Pareto frontier (val)")
        ax.scatter(x, [t.test_accuracy for t in frontier], s=40, facecolors="none", edgecolors="tab:red",
                   zorder=3, label="its test accuracy")
    if teacher:
        ax.scatter([teacher[0] / 1e6], [teacher[1]], marker="*", s=160, c="tab:blue", zorder=4,
                   label="teacher (test)")
    if paper:
        ax.scatter([f / 1e6 for f, _ in PAPER_POINTS], [a for _, a in PAPER_POINTS], marker="D", s=30,
                   facecolors="none", edgecolors="k", label="paper (VGG16, CIFAR-10)")
    ax.set_xlabel("FLOPs (M, multiply-accumulates)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_curve(curves: dict[str, list[dict]] | list[dict], path: str | Path, *, title: str = "",
               key: str = "hypervolume", ylabel: str = "hypervolume (validation)") -> None:
    """Hypervolume against the counted training compute spent so far, one line per search (``curve.json``);
    searches named ``"<group> <run>"`` share their group's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grouped = isinstance(curves, dict)
    curves = curves if grouped else {title or "search": curves}
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    colours: dict[str, str] = {}
    for name, curve in curves.items():
        pts = [(c["train_tmacs"], c[key]) for c in curve if c.get(key) is not None]
        group = name.split(" ")[0] if grouped else name
        if pts:
            new = group not in colours
            colours.setdefault(group, f"C{len(colours) % 10}")
            ax.step(*zip(*pts), where="post", color=colours[group], label=group if new else None, alpha=0.8)
    ax.set(xlabel="training compute spent (TMACs, counted)", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
