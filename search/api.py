"""``run_search``: the orchestration. Optuna samples, Ray Tune runs the trials, MLflow records everything,
then the frontier.

Data flow: search YAML -> ``SearchConfig`` (paths resolved here, on the submitting side) -> the teacher, in
a Ray task, into the shared storage -> Optuna define-by-run sample -> the trial's prune overrides ->
``cascade.prune_epochs`` -> ``tune.report`` + MLflow -> ``TrialRecord`` -> ``trials.json`` -> Pareto frontier.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import Iterator

import yaml

from cascade.config import ConfigError, to_dict

from .config import SearchConfig, base_prune_dict, load_config, resolve_paths
from .noise import quiet
from .frontier import plot_curve
from .progress import Progress
from .record import write_trials
from .report import format_failures
from .results import CONFIG_FILE, STATE_FILE, TRIALS_FILE, SearchResult, collect, load_result, write_frontier
from .teacher import teacher_on_worker
from .tracking import close_parent, log_dataset, log_parent, register_frontier, start_parent
from .trainable import TrialContext
from .tuner import fit

__all__ = ["run_search", "resume_search", "SearchResult", "load_config", "load_result", "write_frontier"]


def run_search(config: str | Path | dict | SearchConfig, overrides: list[str] | dict | None = None, *,
               address: str | None = None, resume: bool = False, verbose: bool = False) -> SearchResult:
    """Run (or with ``resume=True`` continue) a search; returns its trials and frontier. A search in which no
    trial finishes returns normally (``result.finished`` is empty) and ends its parent run FAILED.

    ``address`` (or ``RAY_ADDRESS``) reaches a Ray cluster; without one a local Ray instance is started.
    ``verbose`` brings back Ray's own output; otherwise a compact progress report is printed.
    """
    cfg = config if isinstance(config, SearchConfig) else load_config(config, overrides)
    cfg = resolve_paths(cfg)
    _check_server(cfg.tracking_uri)
    run_dir = cfg.run_dir
    if (run_dir / STATE_FILE).exists() and not resume:
        raise ConfigError("experiment", f"{str(run_dir)!r} already holds a search: continue it with "
                          f"`cascade resume {run_dir}`, or pick another experiment name")
    if not verbose:
        quiet()
    base = base_prune_dict(cfg)
    with _ray(address, verbose):
        # before anything is written: a bad data root or teacher is reported like any other config error
        teacher_acc = teacher_on_worker(base, cache=cfg.teacher_cache, cpus=cfg.resources.cpu,
                                        gpus=cfg.resources.gpu)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
        state = json.loads((run_dir / STATE_FILE).read_text()) if (run_dir / STATE_FILE).exists() else {}
        exp_id, parent = start_parent(
            cfg.tracking_uri, cfg.mlflow.experiment or cfg.experiment, run_name=f"search-{cfg.experiment}",
            tags={"code_version": _code_version(), "config_hash": cfg.config_hash(), "search": "parent",
                  "mlflow.source.name": "cascade search", "storage": cfg.storage_root},
            params={"num_trials": cfg.num_trials, "concurrency": cfg.concurrency, "sampler": cfg.sampler.name,
                    "scheduler": cfg.scheduler.name, "objectives": json.dumps(cfg.objectives),
                    "model": cfg.prune.model.name, "data": cfg.prune.data.name,
                    "joint_epochs": cfg.prune.schedule.joint_epochs,
                    "finetune_epochs": cfg.prune.schedule.finetune_epochs, "teacher_accuracy": teacher_acc},
            artifact_location=(run_dir / "artifacts").as_uri() if cfg.tracking_uri.startswith("sqlite") else None,
            run_id=state.get("parent_run_id"))
        if "parent_run_id" not in state:  # a new parent: the data set as its input, before any trial logs it
            log_dataset(cfg.tracking_uri, parent, name=cfg.prune.data.name, root=cfg.prune.data.root,
                        digest=_data_digest(cfg))
        state.update(parent_run_id=parent, experiment_id=exp_id, tracking_uri=cfg.tracking_uri)
        (run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
        log_parent(cfg.tracking_uri, parent, artifacts=[run_dir / CONFIG_FILE])
        ctx = TrialContext(base=base, tracking_uri=cfg.tracking_uri, experiment_id=exp_id, parent_run_id=parent,
                           teacher_cache=cfg.teacher_cache, teacher_accuracy=teacher_acc,
                           data_digest=_data_digest(cfg), cpus=cfg.resources.cpu, gpus=cfg.resources.gpu,
                           verbose=verbose)
        progress = Progress(run_dir / TRIALS_FILE, dict(cfg.objectives), tracking_uri=cfg.tracking_uri,
                            parent_run_id=parent, total=cfg.num_trials)
        try:
            grid = fit(cfg, ctx, journal=run_dir / "optuna.journal", callbacks=[progress], resume=resume,
                       verbose=verbose)
        except BaseException as e:
            log_parent(cfg.tracking_uri, parent, tags={"error": f"{type(e).__name__}: {e}"})
            close_parent(cfg.tracking_uri, parent, failed=True)
            raise
    trials = collect(grid, cfg.tracking_uri, parent)
    write_trials(run_dir / TRIALS_FILE, trials)
    result = write_frontier(run_dir, cfg=cfg, trials=trials)
    _close(cfg, result)
    return result


def resume_search(run_dir: str | Path, *, address: str | None = None, verbose: bool = False) -> SearchResult:
    """Continue an interrupted search from its directory (its resolved config is stored there)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).exists():
        raise ConfigError("DIR", f"{str(run_dir)!r} holds no search (no {CONFIG_FILE})")
    return run_search(load_config(run_dir / CONFIG_FILE, stored=True), address=address, resume=True,
                      verbose=verbose)


def _close(cfg: SearchConfig, result: SearchResult) -> None:
    """The parent run's summary: counts, hypervolume, the frontier's files and registered students, the
    failures; FAILED when no trial finished."""
    uri, parent = result.tracking_uri, result.parent_run_id
    metrics = {f"trials_{s}": sum(t.status == s for t in result.trials) for s in ("finished", "failed", "stopped")}
    if result.finished:
        best = max(result.finished, key=lambda t: t.val_accuracy)
        metrics.update(best_val_accuracy=best.val_accuracy, best_val_test_accuracy=best.test_accuracy,
                       hypervolume=result.hypervolume)
    metrics["search_train_tmacs"] = sum(t.train_macs for t in result.trials) / 1e12
    failures = format_failures(result.trials)
    curve = result.run_dir / "curve.json"
    if curve.exists():
        plot_curve(json.loads(curve.read_text()), result.run_dir / "hypervolume.png", title=cfg.experiment)
    log_parent(uri, parent, metrics=metrics, step=len(result.finished), tags={"failures": failures} if failures else None,
               artifacts=[p for p in (result.run_dir / n for n in ("frontier.csv", "frontier.png", TRIALS_FILE,
                                                                   "hypervolume.png")) if p.exists()])
    if result.frontier:
        floor = cfg.mlflow.register_min_val_accuracy
        if floor is None:  # chance + 10 points: a student no better than chance is no model to deploy
            floor = 100.0 / (result.finished[0].num_classes or 1) + 10.0
        register_frontier(uri, f"cascade-{cfg.experiment}", result.frontier, min_val_accuracy=floor)
    close_parent(uri, parent, failed=not result.finished,
                 stopped_runs=[t.mlflow_run_id for t in result.trials if t.status == "stopped" and t.mlflow_run_id])


@contextlib.contextmanager
def _ray(address: str | None, verbose: bool) -> Iterator[None]:
    """Join the cluster at ``address`` / ``RAY_ADDRESS`` (inside ``ray job submit`` it is set), else start a
    local instance; shut down only what was started here."""
    import ray

    started = not ray.is_initialized()
    if started:
        # "local" starts a fresh instance: a bare ray.init() would attach to whatever `ray start` left
        # recorded in /tmp/ray, even a cluster that is gone.
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=verbose,
                 logging_level="INFO" if verbose else "ERROR")
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _data_digest(cfg: SearchConfig) -> str:
    d = cfg.prune.data
    ident = [d.name, d.root, d.image_size, d.train_subset, d.test_subset, d.val_fraction, d.split_seed, cfg.prune.seed]
    return hashlib.sha1(json.dumps(ident, default=str).encode()).hexdigest()[:12]


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
