"""The Ray Tune trainable: a thin shell over ``cascade.prune_epochs`` (one cascade per trial).

Per epoch: ``tune.report`` with a checkpoint, MLflow metrics on the trial's nested run. At the end: the
exported student as a logged model and the final objectives, flagged ``done_full_budget`` so that no
partial result can reach the frontier.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from pathlib import Path
from typing import Any

import torch
from ray import tune

import cascade
from cascade.config import PruneConfig, apply_overrides, parse, validate_prune
from cascade.train import load_prune_data, prune_epochs

from .tracking import TrialRun, numeric

__all__ = ["run_trial", "FINAL_KEYS"]

FINAL_KEYS = ("accuracy", "flops", "params", "flops_reduction", "params_reduction", "teacher_accuracy",
              "base_flops", "base_params", "accuracy_change")
RUN_ID_FILE = "mlflow_run_id.txt"


def _device(cfg: PruneConfig, gpus: float) -> str:
    """The device Ray assigned: CUDA_VISIBLE_DEVICES holds this trial's GPU(s), so cuda is the right one."""
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def run_trial(config: dict[str, Any], *, ctx: dict[str, Any], teacher: torch.nn.Module) -> None:
    """One trial. ``config`` holds the sampled ``overrides`` (prune-config paths) and ``logged`` params;
    ``ctx`` the search-wide settings; ``teacher`` the shared frozen teacher (through Ray's object store)."""
    torch.set_num_threads(max(1, int(ctx["cpus"])))
    cfg = validate_prune(parse(PruneConfig, apply_overrides(ctx["base"], config["overrides"])))
    cfg.device = _device(cfg, ctx["gpus"])
    context = tune.get_context()
    name = f"trial_{context.get_trial_id()}"
    work = Path(context.get_trial_dir()) / "work"
    work.mkdir(parents=True, exist_ok=True)
    restored = tune.get_checkpoint()
    if restored is not None:  # a resumed trial continues from its checkpoint and its MLflow run
        with restored.as_directory() as d:
            for f in Path(d).iterdir():
                shutil.copy2(f, work / f.name)
    run_id_file = work / RUN_ID_FILE
    run = TrialRun(ctx["tracking_uri"], ctx["experiment_id"], ctx["parent_run_id"], name,
                   run_id=run_id_file.read_text().strip() if run_id_file.exists() else None)
    run_id_file.write_text(run.run_id)
    try:
        run.log_params({**config["logged"], "trial_id": context.get_trial_id(), "node_id": _node_id(),
                        "device": cfg.device, "joint_epochs": cfg.schedule.joint_epochs,
                        "finetune_epochs": cfg.schedule.finetune_epochs})
        device = torch.device(cfg.device)
        data = load_prune_data(cfg)
        t_model = teacher.to(device)
        gen = prune_epochs(cfg, work, data=data, teacher=(t_model, ctx["teacher_accuracy"]), log=print)
        step = 0
        while True:
            try:
                m = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            # the epoch's index over both phases: a resumed trial continues the numbering, never repeats it
            step = m["epoch"] + (cfg.schedule.joint_epochs if m["phase"] == "finetune" else 0)
            run.log_metrics(m, step=step)
            report = {**numeric(m), "accuracy": m["val_acc/m0"], "epoch_total": step, "mlflow_run_id": run.run_id}
            with tempfile.TemporaryDirectory() as tmp:  # the checkpoint: the run's state and its MLflow id
                for f in ("checkpoint.pt", RUN_ID_FILE):
                    shutil.copy2(work / f, Path(tmp) / f)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
        student = torch.load(work / "student.pt", weights_only=False)
        example = torch.zeros(1, *data.input_size).numpy()
        model_uri = run.log_model(student, example, code_dir=Path(cascade.__file__).parent)
        final = {k: result[k] for k in FINAL_KEYS}
        members = {f"member_{k}/m{i}": mm[k] for i, mm in enumerate(result["members"])
                   for k in ("test_acc", "flops", "params", "requested_flops", "requested_params") if mm[k] is not None}
        run.log_metrics({**final, **members}, step=step)
        run.finish("FINISHED")
        tune.report({**final, "done_full_budget": 1, "epoch_total": step, "mlflow_run_id": run.run_id,
                     "model_uri": model_uri})
    except BaseException:
        run.finish("FAILED", error=traceback.format_exc())
        raise


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return os.uname().nodename
