"""What a search leaves in its results dir: trial records, the frontier (CSV, plot), and ``SearchResult``."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .config import SearchConfig, read_config
from .frontier import best_within, frontier_records, hypervolume, plot_frontier, write_csv
from .record import TrialRecord, members, read_trials
from .tracking import retry

__all__ = ["SearchResult", "collect", "write_frontier", "load_result", "CONFIG_FILE", "STATE_FILE", "TRIALS_FILE"]

CONFIG_FILE, STATE_FILE, TRIALS_FILE = "search.yaml", "search.json", "trials.json"


@dataclass
class SearchResult:
    """What a search produced: every trial's record, the frontier among the finished trials' members (their
    students and TAs, selected on validation accuracy), where it lives."""
    trials: list[TrialRecord]
    frontier: list[TrialRecord]
    run_dir: Path
    tracking_uri: str
    parent_run_id: str
    objectives: dict[str, str] = field(default_factory=dict)
    experiment_id: str = ""

    @property
    def ui(self) -> str:
        """How to see the runs in MLflow's UI: the command (for a local store) and the link."""
        from .tracking import ui_url

        uri = self.tracking_uri
        if uri.startswith(("http://", "https://")):
            return ui_url(uri, self.experiment_id)
        return f"mlflow ui --backend-store-uri {uri}, then {ui_url('http://127.0.0.1:5000', self.experiment_id)}"

    @property
    def finished(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.finished]

    @property
    def failed(self) -> list[TrialRecord]:
        return [t for t in self.trials if t.status == "failed"]

    @property
    def members(self) -> list[TrialRecord]:
        """Every trial's student and TAs, one record each (``record.members``)."""
        return members(self.trials)

    @property
    def hypervolume(self) -> float | None:
        return hypervolume(self.members)

    def best(self, *, max_flops: float | None = None, max_params: float | None = None) -> TrialRecord | None:
        """The finished member with the best validation accuracy within the budgets (None where nothing fits)."""
        return best_within(self.members, max_flops=max_flops, max_params=max_params)

    def load_model(self, record: TrialRecord):
        """A member's exported model (a plain ``nn.Module``), from MLflow."""
        import mlflow

        from .tracking import fluent_uri

        with fluent_uri(self.tracking_uri):
            return mlflow.pytorch.load_model(record.model_uri)


def collect(grid, tracking_uri: str, parent: str) -> list[TrialRecord]:
    """One record per trial from Tune's results; a trial that failed before its first report gets its MLflow
    run found by tag."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_id = retry(client.get_run, parent).info.experiment_id
    trials = []
    for r in grid:
        trial_id = (r.metrics or {}).get("trial_id") or Path(r.path).name.removeprefix("trial_")
        rec = TrialRecord.from_tune(trial_id, r.metrics, r.config, error=r.error, path=r.path)
        if not rec.mlflow_run_id:
            found = retry(client.search_runs, [exp_id], f"tags.trial = 'trial_{trial_id}' and "
                                                        f"tags.mlflow.parentRunId = '{parent}'")
            if found:
                rec.mlflow_run_id, rec.name = found[0].info.run_id, found[0].info.run_name
        trials.append(rec)
    return trials


def write_frontier(run_dir: str | Path, *, cfg: SearchConfig | None = None,
                   trials: list[TrialRecord] | None = None) -> SearchResult:
    """The frontier of a search directory, from what is recorded so far (a running or interrupted search
    too; the data need not be on this machine): writes ``frontier.csv`` and ``frontier.png``."""
    run_dir = Path(run_dir)
    cfg = cfg or read_config(run_dir / CONFIG_FILE)
    trials = trials if trials is not None else read_trials(run_dir / TRIALS_FILE)
    state = json.loads((run_dir / STATE_FILE).read_text()) if (run_dir / STATE_FILE).exists() else {}
    front = frontier_records(members(trials), cfg.objectives)
    write_csv(front, run_dir / "frontier.csv")
    done = [t for t in trials if t.finished]
    teacher = (done[0].base_flops, done[0].teacher_accuracy) if done else None
    d, m = cfg.prune.data, cfg.prune.model
    cifar = d.name == "cifar10" or (d.name == "imagefolder" and "cifar10" in (d.root or ""))
    plot_frontier(trials, front, run_dir / "frontier.png", teacher=teacher,
                  title=f"{cfg.experiment}: {m.name} on {d.name}",
                  paper=m.name == "vgg16_cifar" and m.width == 1.0 and cifar)
    return SearchResult(trials, front, run_dir, state.get("tracking_uri", cfg.tracking_uri),
                        state.get("parent_run_id", ""), dict(cfg.objectives), state.get("experiment_id", ""))


def load_result(run_dir: str | Path) -> SearchResult:
    """A search's result, read back from its directory (finished, running or interrupted)."""
    return write_frontier(run_dir)
