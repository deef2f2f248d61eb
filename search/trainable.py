"""The Ray Tune trainable: a thin shell over ``cascade.prune_epochs`` (one cascade per trial).

Per epoch: ``tune.report`` with a checkpoint, MLflow metrics on the trial's nested run. At the end: the
exported student as a logged model and its ``record.FINAL_KEYS`` (validation accuracy, the objective; test
accuracy, reported), flagged ``done_full_budget`` so that no partial result can reach Optuna or the frontier.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

import cascade
from cascade.config import PruneConfig, prune_config
from cascade.flops import count_flops
from cascade.teacher import get_teacher
from cascade.train import load_prune_data, prune_epochs

from .noise import quiet
from .record import FINAL_KEYS, run_name
from .tracking import TrialRun, log_dataset, numeric

__all__ = ["run_trial", "TrialContext"]

RUN_ID_FILE = "mlflow_run_id.txt"


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a search shares (sent once with the trainable)."""
    base: dict[str, Any]          # the prune config before the trial's sampled values
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    teacher_cache: str            # shared storage holding the teacher the driver had trained on a worker
    teacher_accuracy: float
    data_digest: str
    cpus: float
    gpus: float
    verbose: bool = False


def _device(cfg: PruneConfig, gpus: float) -> str:
    """The device Ray assigned: CUDA_VISIBLE_DEVICES holds this trial's GPU(s), so cuda is the right one."""
    if cfg.device != "auto":
        return cfg.device
    return "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"


def run_trial(config: dict[str, Any], *, ctx: TrialContext) -> None:
    """One trial. ``config`` holds the sampled ``overrides`` (prune-config paths) and ``logged`` params."""
    if not ctx.verbose:
        quiet()
    torch.set_num_threads(max(1, int(ctx.cpus)))
    cfg = prune_config(ctx.base, config["overrides"])
    cfg.device = _device(cfg, ctx.gpus)
    context = tune.get_context()
    trial_id = context.get_trial_id()
    name = run_name(config)
    work = Path(context.get_trial_dir()) / "work"
    work.mkdir(parents=True, exist_ok=True)
    restored = tune.get_checkpoint()
    if restored is not None:  # a resumed trial continues from its checkpoint and its MLflow run
        with restored.as_directory() as d:
            for f in Path(d).iterdir():
                shutil.copy2(f, work / f.name)
    run_id_file = work / RUN_ID_FILE
    resumed = run_id_file.exists()
    run = TrialRun(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, name,
                   run_id=run_id_file.read_text().strip() if resumed else None,
                   tags={"trial": f"trial_{trial_id}"}, system_metrics=ctx.gpus > 0)
    run_id_file.write_text(run.run_id)
    try:
        run.log_params({**config["logged"], "trial_id": trial_id, "node_id": _node_id(),
                        "device": cfg.device, "joint_epochs": cfg.schedule.joint_epochs,
                        "finetune_epochs": cfg.schedule.finetune_epochs})
        if not resumed:
            log_dataset(ctx.tracking_uri, run.run_id, name=cfg.data.name, root=cfg.data.root,
                        digest=ctx.data_digest)
        device = torch.device(cfg.device)
        data = load_prune_data(cfg)
        teacher = get_teacher(cfg, data, device, log=print, cache=ctx.teacher_cache)[0]
        # the student's FLOPs while it trains, for the progress report: its budget (the budget is met within 1%)
        budget_flops = ((1 - cfg.cascade.ratios[0]) * count_flops(teacher, data.input_size)[0]
                        if cfg.cascade.budget == "flops" else None)
        gen = prune_epochs(cfg, work, data=data, teacher=(teacher, ctx.teacher_accuracy), log=print)
        step = 0
        while True:
            try:
                m = next(gen)
            except StopIteration as stop:
                result = stop.value
                break
            # the epoch's index over both phases: a resumed trial continues the numbering, never repeats it
            finetune = m["phase"] == "finetune"
            step = m["epoch"] + (cfg.schedule.joint_epochs if finetune else 0)
            run.log_metrics(m, step=step)
            # the masked (joint) or exported (fine-tune) student's validation accuracy: what ASHA compares
            report = {**numeric(m), "val_accuracy": m["val_acc/m0"], "epoch_total": step, "finetune": int(finetune),
                      "mlflow_run_id": run.run_id, **({"flops": budget_flops} if budget_flops else {})}
            with tempfile.TemporaryDirectory() as tmp:  # the checkpoint: the run's state and its MLflow id
                for f in ("checkpoint.pt", RUN_ID_FILE):
                    shutil.copy2(work / f, Path(tmp) / f)
                tune.report(report, checkpoint=tune.Checkpoint.from_directory(tmp))
        student = torch.load(work / "student.pt", weights_only=False)
        example = torch.zeros(1, *data.input_size).numpy()
        model_uri = run.log_model(student, example, code_dir=Path(cascade.__file__).parent)
        final = {**result, "test_accuracy": result["accuracy"], "num_classes": data.num_classes}
        final = {k: final[k] for k in FINAL_KEYS}
        members = {f"member_{k}/m{i}": mm[k] for i, mm in enumerate(result["members"])
                   for k in ("test_acc", "flops", "params", "requested_flops", "requested_params", "budget_used")
                   if mm[k] is not None}
        run.log_metrics({**final, **members}, step=step)
        run.finish("FINISHED")
        tune.report({**final, "done_full_budget": 1, "epoch_total": step, "finetune": 1,
                     "mlflow_run_id": run.run_id, "model_uri": model_uri})
    except BaseException:
        run.finish("FAILED", error=traceback.format_exc())
        raise


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return os.uname().nodename
