"""MLflow: a parent run per search, a nested run per trial, the student as a logged model.

Every write goes through ``retry`` so concurrent trials on one SQLite store survive "database is locked";
a tracking server (http://) is what clusters should use.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

__all__ = ["retry", "TrialRun", "start_parent", "numeric"]

T = TypeVar("T")


def retry(fn: Callable[..., T], *args, tries: int = 12, **kw) -> T:
    """Call ``fn``, retrying with jittered exponential back-off when the store is locked or busy."""
    for attempt in range(tries):
        try:
            return fn(*args, **kw)
        except Exception as e:  # sqlalchemy OperationalError arrives wrapped in MlflowException
            msg = str(e).lower()
            if attempt == tries - 1 or not any(s in msg for s in ("locked", "busy", "timed out", "connection")):
                raise
            time.sleep(min(5.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


def numeric(d: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not float entries of a metrics dict (strings and nested values dropped)."""
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return retry(client.create_experiment, name, artifact_location=artifact_location)
    except Exception:  # created concurrently by another process
        return retry(client.get_experiment_by_name, name).experiment_id


def start_parent(uri: str, experiment: str, *, run_name: str, tags: dict[str, str], params: dict[str, Any],
                 artifact_location: str | None = None, run_id: str | None = None) -> tuple[str, str]:
    """Create (or, resuming, reopen) the search's parent run. Returns (experiment_id, run_id).

    ``artifact_location`` matters for a local store: MLflow's default is ./mlruns relative to the working
    directory, which Ray Tune changes per trial."""
    client = MlflowClient(uri)
    exp_id = _experiment_id(client, experiment, artifact_location)
    if run_id is None:
        run = retry(client.create_run, exp_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        retry(client.log_batch, run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    else:
        retry(client.update_run, run_id, status="RUNNING")
    return exp_id, run_id


class TrialRun:
    """One trial's nested run. ``run_id`` given (a resumed trial) reuses that run instead of forking one."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, name: str, run_id: str | None = None):
        self.uri = uri
        self.client = MlflowClient(uri)
        if run_id is None:
            run = retry(self.client.create_run, experiment_id, run_name=name,
                        tags={"mlflow.parentRunId": parent_run_id, "trial": name})
            run_id = run.info.run_id
        else:
            retry(self.client.update_run, run_id, status="RUNNING")
        self.run_id = run_id
        self._logged_params: set[str] = set(retry(self.client.get_run, run_id).data.params)

    def log_params(self, params: dict[str, Any]) -> None:
        new = [Param(k, str(v)[:6000]) for k, v in params.items() if k not in self._logged_params]
        if new:
            retry(self.client.log_batch, self.run_id, params=new)
            self._logged_params.update(p.key for p in new)

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        ts = int(time.time() * 1000)
        batch = [Metric(k, v, ts, step) for k, v in numeric(metrics).items()]
        if batch:
            retry(self.client.log_batch, self.run_id, metrics=batch)

    def log_model(self, module, input_example, code_dir: Path | None = None) -> str:
        """Log the exported student with the PyTorch flavour; returns its model URI."""
        import torch

        mlflow.set_tracking_uri(self.uri)

        def _log():  # pickled whole: a pruned module no longer fits its class's state_dict
            with mlflow.start_run(run_id=self.run_id):
                info = mlflow.pytorch.log_model(
                    module, name="student", input_example=input_example, serialization_format="pickle",
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "torchvision", "torch-pruning"],
                    code_paths=[str(code_dir)] if code_dir else None)
            return info.model_uri

        return retry(_log)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        if error:
            retry(self.client.set_tag, self.run_id, "error", error[-5000:])
        retry(self.client.set_terminated, self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))
