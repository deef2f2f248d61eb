"""Ray Tune with Optuna: the searcher (only full-budget results reach the study, each Optuna trial tagged
with its MLflow run), the scheduler, the Tuner over the shared storage."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from spaces import Space

from .config import SearchConfig
from .sampling import make_sampler, sample_space
from .trainable import TrialContext, run_trial

__all__ = ["fit"]


class SpaceSampler:
    """The define-by-run function handed to OptunaSearch (a class, so the searcher can be pickled)."""

    def __init__(self, space: Space, student_ratio: float):
        self.space, self.student_ratio = space, student_ratio

    def __call__(self, trial) -> dict[str, Any]:
        overrides, logged = sample_space(trial, self.space, student_ratio=self.student_ratio)
        return {"overrides": overrides, "logged": logged, "number": trial.number}


def _full_budget_searcher():
    from ray.tune.search.optuna import OptunaSearch

    class FullBudgetOptunaSearch(OptunaSearch):
        """Optuna sees only full-budget results: a failed trial is FAIL, one stopped early (ASHA) is PRUNED,
        never COMPLETE with the partial values of its last report. Each Optuna trial carries its MLflow run id
        (user attribute ``mlflow_run_id``)."""

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            ot = self._ot_trials.get(trial_id)
            if ot is not None and result.get("mlflow_run_id") and "mlflow_run_id" not in ot.user_attrs:
                ot.set_user_attr("mlflow_run_id", result["mlflow_run_id"])
            return super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            if error or not (result or {}).get("done_full_budget"):
                return super().on_trial_complete(trial_id, None, error=error)
            return super().on_trial_complete(trial_id, result, error=False)

    return FullBudgetOptunaSearch


def fit(cfg: SearchConfig, ctx: TrialContext, *, journal: Path, callbacks: list, resume: bool, verbose: bool):
    """Run (or resume) the trials under Ray Tune; returns Tune's ResultGrid. Ray must be initialised."""
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # flops/params arrive with the last report
    # Snapshot the experiment state after every result (trials report once an epoch, so it costs nothing): a driver
    # killed right after a trial checkpointed otherwise resumes that trial from scratch, in a second MLflow run.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "0")
    import optuna
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx),
                                    {"cpu": cfg.resources.cpu, "gpu": cfg.resources.gpu})
    storage_path, name = cfg.tune_path.rsplit("/", 1)
    if resume and tune.Tuner.can_restore(cfg.tune_path):
        # the callbacks come back with the experiment (Progress re-reads trials.json)
        return tune.Tuner.restore(cfg.tune_path, trainable, resume_unfinished=True, resume_errored=False).fit()
    metrics, modes = list(cfg.objectives), list(cfg.objectives.values())
    single = len(metrics) == 1
    if not verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    searcher = _full_budget_searcher()(
        space=SpaceSampler(cfg.parsed_space, cfg.prune.cascade.ratios[0]), metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes, study_name=cfg.experiment, storage=storage,
        sampler=make_sampler(cfg.sampler.name, seed=cfg.seed, n_startup_trials=cfg.sampler.n_startup_trials,
                             space=cfg.parsed_space))
    if searcher._ot_study is not None and not single:  # optuna-dashboard then names the objectives
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            searcher._ot_study.set_metric_names(metrics)
    scheduler = None
    if cfg.scheduler.name == "pareto":
        from .schedulers import ParetoHalving

        scheduler = ParetoHalving(metrics=metrics, modes=modes, time_attr="epoch_total", max_t=cfg.epochs,
                                  grace_period=cfg.scheduler.grace_period,
                                  reduction_factor=cfg.scheduler.reduction_factor)
    if cfg.scheduler.name == "asha":
        from ray.tune.schedulers import ASHAScheduler

        scheduler = ASHAScheduler(metric=metrics[0], mode=modes[0], time_attr="epoch_total",
                                  max_t=cfg.epochs,
                                  grace_period=cfg.scheduler.grace_period,
                                  reduction_factor=cfg.scheduler.reduction_factor)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=cfg.num_trials,
                                    max_concurrent_trials=cfg.concurrency, trial_dirname_creator=_trial_dirname,
                                    # the next trial runs in a finished trial's worker process, with torch
                                    # already imported (bench/search_overhead.py: seconds a trial)
                                    reuse_actors=True),
        run_config=tune.RunConfig(name=name, storage_path=storage_path, verbose=2 if verbose else 0,
                                  callbacks=callbacks,
                                  failure_config=tune.FailureConfig(max_failures=cfg.max_retries),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    return tuner.fit()


def _trial_dirname(trial) -> str:
    return f"trial_{trial.trial_id}"  # Ray's default packs the whole sampled config into the name
