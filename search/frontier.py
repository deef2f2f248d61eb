"""The Pareto frontier of finished trials: the non-dominated set, its table, CSV and plot."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Sequence

__all__ = ["pareto_front", "frontier_records", "write_csv", "plot_frontier", "format_table", "best_at_budgets", "best_within",
           "PAPER_POINTS"]

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


def frontier_records(trials: list[dict], objectives: dict[str, str]) -> list[dict]:
    """Finished, full-budget trials on the frontier, sorted by FLOPs."""
    done = [t for t in trials if t.get("status") == "finished"]
    keys = list(objectives)
    idx = pareto_front([[t[k] for k in keys] for t in done], [objectives[k] for k in keys])
    return sorted((done[i] for i in idx), key=lambda t: (t["flops"], -t["accuracy"]))


def best_within(trials: list[dict], *, max_flops: float | None = None, max_params: float | None = None) -> dict | None:
    """The most accurate finished trial within the budgets (None where nothing fits)."""
    fits = [t for t in trials if t.get("status") == "finished"
            and (max_flops is None or t["flops"] <= max_flops) and (max_params is None or t["params"] <= max_params)]
    return max(fits, key=lambda t: t["accuracy"]) if fits else None


def best_at_budgets(trials: list[dict], budgets: Sequence[float]) -> list[dict | None]:
    """For each FLOPs budget, the most accurate finished trial within it."""
    return [best_within(trials, max_flops=b) for b in budgets]


COLUMNS = ["accuracy", "flops", "params", "flops_reduction", "params_reduction", "mlflow_run_id"]


def _row(t: dict) -> dict[str, Any]:
    return {**{c: t.get(c) for c in COLUMNS}, **{f"hp.{k}": v for k, v in sorted(t.get("config", {}).items())}}


def write_csv(records: list[dict], path: str | Path) -> None:
    rows = [_row(t) for t in records]
    fields = list(dict.fromkeys(k for r in rows for k in r)) or COLUMNS
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)


def format_table(records: list[dict]) -> str:
    """A fixed-width table: accuracy, FLOPs, params, reductions, the TA ladder and the MLflow run id."""
    head = f"{'acc %':>7} {'FLOPs':>9} {'params':>9} {'-FLOPs':>7} {'-params':>8}  {'TAs':>3} {'ratios':<24} run id"
    lines = [head, "-" * len(head)]
    for t in records:
        c = t.get("config", {})
        ratios = ",".join(f"{c[k]:.2f}" for k in sorted(c) if k.startswith("ratio_m"))
        lines.append(f"{t['accuracy']:7.2f} {t['flops'] / 1e6:8.2f}M {t['params'] / 1e6:8.3f}M "
                     f"{t['flops_reduction']:7.1%} {t['params_reduction']:8.1%}  {c.get('num_tas', '?'):>3} "
                     f"{ratios:<24} {t.get('mlflow_run_id', '')}")
    return "\n".join(lines)


def plot_frontier(trials: list[dict], frontier: list[dict], path: str | Path, *, title: str = "",
                  teacher: tuple[float, float] | None = None, paper: bool = False) -> None:
    """Accuracy vs FLOPs: every finished trial, the frontier highlighted, the teacher, the paper's points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [t for t in trials if t.get("status") == "finished"]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    ax.scatter([t["flops"] / 1e6 for t in done], [t["accuracy"] for t in done], s=22, c="0.6", label="trials")
    if frontier:
        ax.step([t["flops"] / 1e6 for t in frontier], [t["accuracy"] for t in frontier], where="post",
                c="tab:red", lw=1.5)
        ax.scatter([t["flops"] / 1e6 for t in frontier], [t["accuracy"] for t in frontier], s=40, c="tab:red",
                   zorder=3, label="Pareto frontier")
    if teacher:
        ax.scatter([teacher[0] / 1e6], [teacher[1]], marker="*", s=160, c="tab:blue", zorder=4, label="teacher")
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
