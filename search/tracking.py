"""MLflow: a parent run per search, a nested run per trial, the student as a logged model, the frontier's
students in the Model Registry.

Every write goes through ``retry`` so concurrent trials on one SQLite store survive "database is locked";
a tracking server (http://) is what clusters should use.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import random
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import mlflow
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient

__all__ = ["retry", "TrialRun", "start_parent", "numeric", "fluent_uri", "EXPERIMENT_KIND", "log_parent",
           "close_parent", "register_frontier", "log_dataset", "ui_url"]

T = TypeVar("T")
# MLflow 3 tags an experiment's kind; older UIs open it by this tag. MLflow 3.17's UI decides by its own
# "workflow type" instead (the URL's ?workflowType=, else the browser's last choice, GenAI by default): the
# links we print carry it (``ui_url``).
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")
# A view of the runs table stored in the experiment (the UI's shared views): the trials flat (not folded under
# the parent), best validation accuracy first, the columns that matter. Opened by ``ui_url``.
VIEW_KEY = "cascade"
VIEW = {"searchFilter": "tags.trial LIKE 'trial_%'", "orderByKey": "metrics.`val_accuracy`", "orderByAsc": False,
        "selectedColumns": ["attributes.`Duration`", "metrics.`val_accuracy`", "metrics.`test_accuracy`",
                            "metrics.`flops`", "metrics.`params`", "metrics.`flops_reduction`", "params.`method`",
                            "params.`num_tas`", "params.`student_ratio`", "params.`tau`", "params.`lambda_kd`",
                            "params.`lr`"]}


def ui_url(base: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's UI at ``base`` (``mlflow ui``'s address), as model training, in the
    stored view."""
    return (f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
            f"&viewStateShareKey={VIEW_KEY}")


def retry(fn: Callable[..., T], *args, tries: int = 12, **kw) -> T:
    """Call ``fn``, retrying with jittered exponential back-off when the store is locked or busy."""
    for attempt in range(tries):
        try:
            return fn(*args, **kw)
        except Exception as e:  # sqlalchemy OperationalError arrives wrapped in MlflowException
            msg = str(e).lower()
            # a UNIQUE clash: two processes created the same row at once; the retry finds it
            if attempt == tries - 1 or not any(s in msg for s in ("locked", "busy", "timed out", "connection",
                                                                  "unique constraint")):
                raise
            time.sleep(min(5.0, 0.05 * 2 ** attempt) * (0.5 + random.random()))
    raise AssertionError("unreachable")


@contextlib.contextmanager
def fluent_uri(uri: str):
    """MLflow's fluent API (log_model, register_model) reads a process-wide URI, mirrored into
    MLFLOW_TRACKING_URI: set it for the call only, so the caller's later runs and subprocesses never follow it."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(before)


def numeric(d: dict[str, Any]) -> dict[str, float]:
    """The finite-or-not float entries of a metrics dict (strings and nested values dropped)."""
    return {k: float(v) for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _experiment_id(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    exp = retry(client.get_experiment_by_name, name)
    if exp is not None:
        return exp.experiment_id
    try:
        return retry(client.create_experiment, name, artifact_location=artifact_location,
                     tags=dict([EXPERIMENT_KIND]))
    except Exception:  # created concurrently by another process
        return retry(client.get_experiment_by_name, name).experiment_id


def start_parent(uri: str, experiment: str, *, run_name: str, tags: dict[str, str], params: dict[str, Any],
                 artifact_location: str | None = None, run_id: str | None = None) -> tuple[str, str]:
    """Create (or, resuming, reopen) the search's parent run. Returns (experiment_id, run_id).

    ``artifact_location`` matters for a local store: MLflow's default is ./mlruns relative to the working
    directory, which Ray Tune changes per trial."""
    client = MlflowClient(uri)
    exp_id = _experiment_id(client, experiment, artifact_location)
    retry(client.set_experiment_tag, exp_id, *EXPERIMENT_KIND)  # also on an experiment made elsewhere
    retry(client.set_experiment_tag, exp_id, f"mlflow.sharedViewState.{VIEW_KEY}", json.dumps(VIEW))
    if run_id is None:
        run = retry(client.create_run, exp_id, run_name=run_name, tags=tags)
        run_id = run.info.run_id
        retry(client.log_batch, run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
    else:
        retry(client.update_run, run_id, status="RUNNING")
    return exp_id, run_id


def log_parent(uri: str, run_id: str, *, metrics: dict[str, float] | None = None, step: int = 0,
               tags: dict[str, str] | None = None, artifacts: list[Path] = ()) -> None:
    """Metrics, tags and files on the search's parent run."""
    client = MlflowClient(uri)
    if metrics or tags:
        ts = int(time.time() * 1000)
        retry(client.log_batch, run_id, metrics=[Metric(k, float(v), ts, step) for k, v in (metrics or {}).items()],
              tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()])
    for path in artifacts:
        retry(client.log_artifact, run_id, str(path))


def close_parent(uri: str, run_id: str, *, failed: bool, stopped_runs: list[str] = ()) -> None:
    """End the parent FINISHED, or FAILED when no trial finished; scheduler-stopped trials never ran their own
    finish(), so their runs end KILLED here."""
    client = MlflowClient(uri)
    for rid in stopped_runs:
        retry(client.set_terminated, rid, status="KILLED")
    retry(client.set_terminated, run_id, status="FAILED" if failed else "FINISHED")


def register_frontier(uri: str, name: str, frontier: list, *, min_val_accuracy: float) -> dict[str, str]:
    """Register the frontier's students with at least ``min_val_accuracy`` as versions of one registered model per
    search, each with an alias naming its FLOPs (``flops_1p23M``); a resumed search registers no student twice.
    Returns alias -> version."""
    client = MlflowClient(uri)
    aliases = {}
    for t in frontier:
        if not t.model_uri or t.val_accuracy < min_val_accuracy:
            continue
        known = [v for v in retry(client.search_model_versions, f"name = '{name}' and run_id = '{t.mlflow_run_id}'")
                 if v.source == t.model_uri]  # a trial's run holds its student's and its TAs' models
        if known:
            version = known[0].version
        else:  # the fluent call resolves a logged model's URI; what it prints would land in the search's console
            with fluent_uri(uri), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                version = retry(mlflow.register_model, t.model_uri, name).version
        alias = f"flops_{t.flops / 1e6:.2f}M".replace(".", "p")
        retry(client.set_registered_model_alias, name, alias, version)
        aliases[alias] = str(version)
    return aliases


def log_dataset(uri: str, run_id: str, *, name: str, root: str | None, digest: str) -> None:
    """The data set as the run's input (MLflow's Dataset panel): its name, where it lives, a digest of what
    selects it (name, root, subset sizes, validation fraction)."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag

    ds = MetaDataset(CodeDatasetSource({"data": name, "root": root or ""}), name=name, digest=digest)
    retry(MlflowClient(uri).log_inputs, run_id,
          [DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "training")])])


class TrialRun:
    """One trial's nested run, found under the parent by the trial's tag (``trial``) and reopened when an earlier
    attempt made it: a resumed or retried trial never forks a second run, whatever its checkpoint knew.
    ``system_metrics`` samples CPU, memory and (with pynvml) GPU utilisation into the run while it is open."""

    def __init__(self, uri: str, experiment_id: str, parent_run_id: str, name: str, *, trial: str,
                 system_metrics: bool = False):
        self.uri = uri
        self.client = MlflowClient(uri)
        found = retry(self.client.search_runs, [experiment_id],
                      f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.trial = '{trial}'", max_results=1)
        self.reopened = bool(found)
        if found:
            self.run_id = found[0].info.run_id
            retry(self.client.update_run, self.run_id, status="RUNNING")
        else:
            self.run_id = retry(self.client.create_run, experiment_id, run_name=name,
                                tags={"mlflow.parentRunId": parent_run_id, "trial": trial}).info.run_id
        self._logged_params: set[str] = set(found[0].data.params) if found else set()  # search_runs has them
        self._monitor = None
        if system_metrics:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=True, tracking_uri=uri)
            self._monitor.start()

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

    def log_model(self, module, input_example, *, name: str, code_dir: Path | None = None) -> str:
        """Log an exported member with the PyTorch flavour under ``name`` (its role and FLOPs, e.g.
        ``student_1p23M``); returns its model URI."""
        import torch

        def _log():  # pickled whole: a pruned module no longer fits its class's state_dict
            with fluent_uri(self.uri), mlflow.start_run(run_id=self.run_id):
                info = mlflow.pytorch.log_model(
                    module, name=name, input_example=input_example, serialization_format="pickle",
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "torchvision", "torch-pruning"],
                    code_paths=[str(code_dir)] if code_dir else None)
            return info.model_uri

        return retry(_log)

    def finish(self, status: str = "FINISHED", error: str | None = None) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None
        if error:
            retry(self.client.set_tag, self.run_id, "error", error[-5000:])
        retry(self.client.set_terminated, self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))
