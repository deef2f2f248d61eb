"""``run_search``: Optuna samples, Ray Tune runs the trials, MLflow records everything, then the frontier.

Data flow: search YAML -> ``SearchConfig`` -> Optuna define-by-run sample -> the trial's prune overrides ->
``cascade.prune_epochs`` -> ``tune.report`` + MLflow -> ``trials.json`` -> Pareto frontier.
"""
from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cascade.config import ConfigError, to_dict
from cascade.data import default_cache_dir
from cascade.engine import resolve_device
from cascade.teacher import get_teacher
from cascade.train import load_prune_data
from spaces import Space, make_sampler, sample_space

from .config import SearchConfig, base_prune_dict, load_config, trial_prune_config
from .frontier import best_at_budgets, best_within, format_table, frontier_records, plot_frontier, write_csv
from .tracking import retry, start_parent

__all__ = ["run_search", "resume_search", "SearchResult", "load_config", "load_result", "write_frontier"]

CONFIG_FILE, STATE_FILE, TRIALS_FILE = "search.yaml", "search.json", "trials.json"


@dataclass
class SearchResult:
    """What a search produced: every trial's record, the frontier among the finished ones, where it lives."""
    trials: list[dict]
    frontier: list[dict]
    run_dir: Path
    tracking_uri: str
    parent_run_id: str
    objectives: dict[str, str] = field(default_factory=dict)

    def best(self, *, max_flops: float | None = None, max_params: float | None = None) -> dict | None:
        """The most accurate finished trial within the budgets (None where nothing fits)."""
        return best_within(self.trials, max_flops=max_flops, max_params=max_params)


class SpaceSampler:
    """The define-by-run function handed to OptunaSearch (a class, so the searcher can be pickled)."""

    def __init__(self, space: Space):
        self.space = space

    def __call__(self, trial) -> dict[str, Any]:
        overrides, logged = sample_space(trial, self.space)
        return {"overrides": overrides, "logged": logged}


def _full_budget_searcher():
    from ray.tune.search.optuna import OptunaSearch

    class FullBudgetOptunaSearch(OptunaSearch):
        """Optuna sees only full-budget results: a failed trial is FAIL, one stopped early (ASHA) is PRUNED,
        never COMPLETE with the partial values of its last report."""

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if error or not (result or {}).get("done_full_budget"):
                return super().on_trial_complete(trial_id, None, error=error)
            return super().on_trial_complete(trial_id, result, error=False)

    return FullBudgetOptunaSearch


def _absolute(cfg: SearchConfig) -> SearchConfig:
    """Ray Tune runs each trial in its own directory: every path a trial reads must be absolute."""
    cfg.results_dir = str(Path(cfg.results_dir).expanduser().resolve())
    cfg.cache_dir = str(Path(cfg.cache_dir or default_cache_dir()).expanduser().resolve())
    if cfg.data.root:
        cfg.data.root = str(Path(cfg.data.root).expanduser().resolve())
    if cfg.teacher.checkpoint:
        cfg.teacher.checkpoint = str(Path(cfg.teacher.checkpoint).expanduser().resolve())
    return cfg


def _check_server(uri: str) -> None:
    """An http(s) tracking URI must answer now: a typo would otherwise cost minutes of retries per write."""
    if not uri.startswith(("http://", "https://")):
        return
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10)
    except OSError as e:
        field = "mlflow.tracking_uri" if "MLFLOW_TRACKING_URI" not in os.environ else "MLFLOW_TRACKING_URI"
        raise ConfigError(field, f"no MLflow server answers at {uri} ({getattr(e, 'reason', e)})") from None


def _code_version() -> str:
    try:
        root = Path(__file__).resolve().parents[1]
        return subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def run_search(config: str | Path | dict | SearchConfig, overrides: list[str] | dict | None = None, *,
               address: str | None = None, resume: bool = False, verbose: int = 1) -> SearchResult:
    """Run (or with ``resume=True`` continue) a search; returns its trials and frontier.

    ``address`` (or ``RAY_ADDRESS``) reaches a Ray cluster; without one a local Ray instance is started.
    """
    cfg = config if isinstance(config, SearchConfig) else load_config(config, overrides)
    cfg = _absolute(cfg)
    _check_server(cfg.tracking_uri)
    run_dir = cfg.run_dir
    tune_dir = run_dir / "tune"
    if tune_dir.exists() and not resume:
        raise ConfigError("experiment", f"{str(run_dir)!r} already holds a search: continue it with "
                          f"`cascade resume {run_dir}`, or pick another experiment name")
    # The teacher and the decoded data, once, before any trial (and before anything is written: a bad data
    # root or teacher is reported like any other config error); trials get the teacher via the object store.
    base = trial_prune_config(cfg, {})
    data = load_prune_data(base)
    teacher, teacher_acc = get_teacher(base, data, resolve_device(cfg.device))
    teacher = teacher.cpu()

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    state = json.loads((run_dir / STATE_FILE).read_text()) if (run_dir / STATE_FILE).exists() else {}

    exp_id, parent = start_parent(
        cfg.tracking_uri, cfg.mlflow.experiment or cfg.experiment, run_name=f"search-{cfg.experiment}",
        tags={"code_version": _code_version(), "config_hash": cfg.config_hash(), "search": "parent"},
        params={"num_trials": cfg.num_trials, "concurrency": cfg.concurrency, "sampler": cfg.sampler.name,
                "scheduler": cfg.scheduler.name, "objectives": json.dumps(cfg.objectives), "model": cfg.model.name,
                "data": cfg.data.name, "joint_epochs": cfg.budget.joint_epochs,
                "finetune_epochs": cfg.budget.finetune_epochs, "teacher_accuracy": teacher_acc},
        artifact_location=(run_dir / "artifacts").as_uri() if cfg.tracking_uri.startswith("sqlite") else None,
        run_id=state.get("parent_run_id"))
    state.update(parent_run_id=parent, experiment_id=exp_id, tracking_uri=cfg.tracking_uri)
    (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    _log_parent_artifact(cfg.tracking_uri, parent, run_dir / CONFIG_FILE)

    ctx = {"base": base_prune_dict(cfg), "tracking_uri": cfg.tracking_uri, "experiment_id": exp_id,
           "parent_run_id": parent, "teacher_accuracy": teacher_acc, "cpus": cfg.resources.cpu,
           "gpus": cfg.resources.gpu}
    grid = _tune(cfg, ctx, teacher, tune_dir, address=address, resume=resume, verbose=verbose)
    trials = _collect(grid, cfg.tracking_uri, parent)
    (run_dir / TRIALS_FILE).write_text(json.dumps(trials, indent=2, default=str))
    result = write_frontier(run_dir, cfg=cfg, trials=trials, parent_run_id=parent)
    _close_parent(cfg.tracking_uri, parent, run_dir, trials)
    return result


def resume_search(run_dir: str | Path, *, address: str | None = None, verbose: int = 1) -> SearchResult:
    """Continue an interrupted search from its directory (its resolved config is stored there)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise ConfigError("DIR", f"{str(run_dir)!r} holds no search (no {CONFIG_FILE})")
    return run_search(run_dir / CONFIG_FILE, address=address, resume=True, verbose=verbose)


def _tune(cfg: SearchConfig, ctx: dict, teacher, tune_dir: Path, *, address: str | None, resume: bool,
          verbose: int):
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # flops/params arrive with the last report
    import optuna
    import ray
    from ray import tune

    from .trainable import run_trial

    started = not ray.is_initialized()
    if started:
        # "local" starts a fresh instance: a bare ray.init() would attach to whatever `ray start` left
        # recorded in /tmp/ray, even a cluster that is gone.
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=verbose > 0)
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx, teacher=teacher),
                                    {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    try:
        if resume and tune.Tuner.can_restore(str(tune_dir)):
            tuner = tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=False)
        else:
            metrics, modes = list(cfg.objectives), list(cfg.objectives.values())
            single = len(metrics) == 1
            storage = optuna.storages.JournalStorage(
                optuna.storages.journal.JournalFileBackend(str(tune_dir.parent / "optuna.journal")))
            searcher = _full_budget_searcher()(
                space=SpaceSampler(cfg.parsed_space()), metric=metrics[0] if single else metrics,
                mode=modes[0] if single else modes, study_name=cfg.experiment, storage=storage,
                sampler=make_sampler(cfg.sampler.name, seed=cfg.seed, n_startup_trials=cfg.sampler.n_startup_trials))
            scheduler = None
            if cfg.scheduler.name == "asha":
                from ray.tune.schedulers import ASHAScheduler

                scheduler = ASHAScheduler(metric=metrics[0], mode=modes[0], time_attr="epoch_total",
                                          max_t=cfg.budget.joint_epochs + cfg.budget.finetune_epochs,
                                          grace_period=cfg.scheduler.grace_period,
                                          reduction_factor=cfg.scheduler.reduction_factor)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=cfg.num_trials,
                                            max_concurrent_trials=cfg.concurrency,
                                            trial_dirname_creator=_trial_dirname,
                                            # the next trial runs in a finished trial's worker process, with
                                            # torch already imported (bench/search_overhead.py: seconds a trial)
                                            reuse_actors=True),
                run_config=tune.RunConfig(name=tune_dir.name, storage_path=str(tune_dir.parent), verbose=verbose,
                                          failure_config=tune.FailureConfig(max_failures=cfg.max_retries),
                                          checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
        return tuner.fit()
    finally:
        if started:
            ray.shutdown()


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # Ray's default packs the whole sampled config into the name


def _collect(grid, tracking_uri: str, parent: str) -> list[dict]:
    """One record per trial: status (finished | failed | stopped), objectives, sampled config, MLflow ids."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    exp_id = retry(client.get_run, parent).info.experiment_id
    trials = []
    for r in grid:
        m = r.metrics or {}
        status = "failed" if r.error else ("finished" if m.get("done_full_budget") else "stopped")
        trial_id = m.get("trial_id") or Path(r.path).name.removeprefix("trial_")
        if not m.get("mlflow_run_id"):  # a trial that failed before its first report: find its run by tag
            found = retry(client.search_runs, [exp_id], f"tags.trial = 'trial_{trial_id}' and "
                                                        f"tags.mlflow.parentRunId = '{parent}'")
            m = {**m, "mlflow_run_id": found[0].info.run_id if found else None}
        rec = {"trial_id": trial_id, "status": status,
               "config": (r.config or {}).get("logged", {}), "overrides": (r.config or {}).get("overrides", {}),
               "epochs": m.get("epoch_total", 0), "mlflow_run_id": m.get("mlflow_run_id"),
               "model_uri": m.get("model_uri"), "path": r.path}
        if status == "finished":
            rec.update({k: m[k] for k in ("accuracy", "flops", "params", "flops_reduction", "params_reduction",
                                          "teacher_accuracy", "base_flops", "base_params")})
        if r.error:
            rec["error"] = str(r.error).strip().splitlines()[-1][:500] if str(r.error).strip() else repr(r.error)
        trials.append(rec)
    return trials


def write_frontier(run_dir: str | Path, *, cfg: SearchConfig | None = None, trials: list[dict] | None = None,
                   parent_run_id: str | None = None, budgets: list[float] | None = None) -> SearchResult:
    """Compute the frontier of a search directory and write ``frontier.csv`` and ``frontier.png``."""
    run_dir = Path(run_dir)
    cfg = cfg or load_config(run_dir / CONFIG_FILE)
    trials = trials if trials is not None else json.loads((run_dir / TRIALS_FILE).read_text())
    state = json.loads((run_dir / STATE_FILE).read_text()) if (run_dir / STATE_FILE).exists() else {}
    front = frontier_records(trials, cfg.objectives)
    write_csv(front, run_dir / "frontier.csv")
    done = [t for t in trials if t["status"] == "finished"]
    teacher = (done[0]["base_flops"], done[0]["teacher_accuracy"]) if done else None
    cifar = cfg.data.name == "cifar10" or (cfg.data.name == "imagefolder" and "cifar10" in (cfg.data.root or ""))
    plot_frontier(trials, front, run_dir / "frontier.png", teacher=teacher,
                  title=f"{cfg.experiment}: {cfg.model.name} on {cfg.data.name}",
                  paper=cfg.model.name == "vgg16_cifar" and cfg.model.width == 1.0 and cifar)
    return SearchResult(trials, front, run_dir, cfg.tracking_uri, parent_run_id or state.get("parent_run_id", ""),
                        dict(cfg.objectives))


def load_result(run_dir: str | Path) -> SearchResult:
    """A finished search's result, read back from its directory."""
    return write_frontier(run_dir)


def _log_parent_artifact(uri: str, run_id: str, path: Path) -> None:
    from mlflow.tracking import MlflowClient

    retry(MlflowClient(uri).log_artifact, run_id, str(path))


def _close_parent(uri: str, parent: str, run_dir: Path, trials: list[dict]) -> None:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    for name in ("frontier.csv", "frontier.png", TRIALS_FILE):
        retry(client.log_artifact, parent, str(run_dir / name))
    done = [t for t in trials if t["status"] == "finished"]
    import time

    ts = int(time.time() * 1000)
    metrics = {"trials_finished": len(done), "trials_failed": sum(t["status"] == "failed" for t in trials),
               "trials_stopped": sum(t["status"] == "stopped" for t in trials)}
    if done:
        metrics["best_accuracy"] = max(t["accuracy"] for t in done)
    retry(client.log_batch, parent, metrics=[Metric(k, float(v), ts, 0) for k, v in metrics.items()])
    for t in trials:  # a trial stopped by the scheduler never ran its own finish()
        if t["status"] == "stopped" and t.get("mlflow_run_id"):
            retry(client.set_terminated, t["mlflow_run_id"], status="KILLED")
    retry(client.set_terminated, parent, status="FINISHED")


def format_budget_report(trials: list[dict], budgets: list[float]) -> str:
    lines = []
    for b, t in zip(budgets, best_at_budgets(trials, budgets)):
        lines.append(f"<= {b / 1e6:.2f}M FLOPs: " + (f"{t['accuracy']:.2f}% at {t['flops'] / 1e6:.2f}M "
                                                     f"(run {t.get('mlflow_run_id')})" if t else "no trial fits"))
    return "\n".join(lines)


def print_frontier(result: SearchResult) -> None:
    print(format_table(result.frontier))
    print(f"\n{len(result.frontier)} frontier / {len(result.trials)} trials; wrote {result.run_dir / 'frontier.csv'}"
          f" and {result.run_dir / 'frontier.png'}; MLflow: {result.tracking_uri} (parent run {result.parent_run_id})")
