"""What the console shows at the end of a search: the frontier table, the failures, budgets."""
from __future__ import annotations

from .frontier import best_at_budgets, format_table
from .record import TrialRecord
from .results import SearchResult

__all__ = ["print_result", "format_failures", "format_budget_report"]


def format_failures(trials: list[TrialRecord]) -> str:
    """One line per failed trial: its name, the last line of its error, its MLflow run."""
    return "\n".join(f"{t.name or t.trial_id}: {t.error} (MLflow run {t.mlflow_run_id})"
                     for t in trials if t.status == "failed")


def format_budget_report(trials: list[TrialRecord], budgets: list[float]) -> str:
    lines = []
    for b, t in zip(budgets, best_at_budgets(trials, budgets)):
        lines.append(f"<= {b / 1e6:.2f}M FLOPs: " + (
            f"val {t.val_accuracy:.2f}% (test {t.test_accuracy:.2f}%) at {t.flops / 1e6:.2f}M (run {t.mlflow_run_id})"
            if t else "no trial fits"))
    return "\n".join(lines)


def print_result(result: SearchResult) -> None:
    """The frontier (chosen on validation; test beside it), then the failures, then where everything is."""
    print(format_table(result.frontier))
    failed = result.failed
    if failed:
        print(f"\n{len(failed)} failed trial(s):\n{format_failures(result.trials)}")
    hv = result.hypervolume
    counts = {s: sum(t.status == s for t in result.trials) for s in ("finished", "failed", "stopped", "running")}
    print(f"\n{len(result.frontier)} on the frontier; trials: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n)
          + (f"; hypervolume {hv:.4f}" if hv is not None else "")
          + f"\nwrote {result.run_dir / 'frontier.csv'} and {result.run_dir / 'frontier.png'}; "
            f"MLflow: {result.tracking_uri} (parent run {result.parent_run_id})\n"
            f"to look: {result.ui}")
    if not result.finished:
        print("no trial finished: see the failures above", flush=True)
