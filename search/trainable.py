"""The Ray Tune trainable: a thin shell over ``cascade.run_prune`` (one run per trial), as ``cascade prune``.

Per epoch: ``tune.report`` with a checkpoint, MLflow metrics on the trial's nested run. At the end: the
exported student as a logged model and its ``record.FINAL_KEYS`` (validation accuracy, the objective; test
accuracy, reported), flagged ``done_full_budget`` so that no partial result can reach Optuna or the frontier.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import traceback
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ray import tune

import cascade
from cascade.config import PruneConfig, prune_config
from cascade.flops import count_flops
from cascade.teacher import get_teacher
from cascade.train import CHECKPOINT, load_prune_data, run_prune

from .noise import quiet
from .record import FINAL_KEYS, run_name
from .tracking import TrialRun, log_dataset, numeric

__all__ = ["run_trial", "TrialContext"]


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
    # a resumed (or retried) trial continues from its last checkpoint, and always in its own MLflow run
    _restore_newest_checkpoint(context.get_storage(), work)
    run = TrialRun(ctx.tracking_uri, ctx.experiment_id, ctx.parent_run_id, name, trial=f"trial_{trial_id}",
                   system_metrics=ctx.gpus > 0)
    try:
        run.log_params({**config["logged"], "trial_id": trial_id, "node_id": _node_id(),
                        "device": cfg.device, "joint_epochs": cfg.schedule.joint_epochs,
                        "finetune_epochs": cfg.schedule.finetune_epochs})
        if not run.reopened:
            log_dataset(ctx.tracking_uri, run.run_id, name=cfg.data.name, root=cfg.data.root,
                        digest=ctx.data_digest)
        device = torch.device(cfg.device)
        data = load_prune_data(cfg)
        teacher = get_teacher(cfg, data, device, log=print, cache=ctx.teacher_cache)[0]
        # the student's FLOPs while it trains, for the progress report: its budget (the budget is met within 1%)
        budget_flops = ((1 - cfg.cascade.ratios[0]) * count_flops(teacher, data.input_size)[0]
                        if cfg.cascade.budget == "flops" else None)
        last = {"step": 0, "val": 0.0, "macs": 0.0}

        def report(m: dict) -> None:
            # the epoch's index over every phase: a resumed trial continues the numbering, never repeats it
            step = last["step"] = m["epoch_total"]
            run.log_metrics(m, step=step)
            # the masked (joint) or exported (fine-tune) student's validation accuracy: what the schedulers
            # compare (a TA's own fine-tuning leaves the student's last)
            last["val"] = m.get("val_acc/m0", last["val"])
            last["macs"] += m["train_macs"]
            metrics = {**numeric(m), "phase": m["phase"], "val_accuracy": last["val"], "epoch_total": step,
                       "train_macs_total": last["macs"],
                       "finetune": int(m["phase"] != "joint"), "mlflow_run_id": run.run_id,
                       **({"flops": budget_flops} if budget_flops else {})}
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copy2(work / CHECKPOINT, Path(tmp) / CHECKPOINT)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

        result = run_prune(cfg, work, data=data, teacher=(teacher, ctx.teacher_accuracy), log=print,
                           on_epoch=report)
        step = last["step"]
        student = torch.load(work / "student.pt", weights_only=False)
        example = torch.zeros(1, *data.input_size).numpy()
        code = Path(cascade.__file__).parent
        model_uri = run.log_model(student, example, name=_model_name("student", result["flops"]), code_dir=code)
        family = []  # every TA is a pruned model too: a point of its own on the frontier
        for j, mm in enumerate(result["members"][1:], start=1):
            module = torch.load(work / "members" / f"m{j}.pt", weights_only=False)
            uri = run.log_model(module, example, name=_model_name(f"m{j}", mm["flops"]), code_dir=code) \
                if mm["ratio"] > 0 else None  # the unpruned member is the reference, not a model to ship
            family.append({"member": j, "ratio": mm["ratio"], "val_accuracy": mm["val_acc"],
                           "test_accuracy": mm["test_acc"], "flops": mm["flops"], "params": mm["params"],
                           "fine_tuned": mm["fine_tuned"], "model_uri": uri})
        final = {**result, "test_accuracy": result["accuracy"], "num_classes": data.num_classes}
        final = {k: final[k] for k in FINAL_KEYS}
        members = {f"member_{k}/m{i}": mm[k] for i, mm in enumerate(result["members"])
                   for k in ("test_acc", "flops", "params", "requested_flops", "requested_params", "budget_used")
                   if mm[k] is not None}
        run.log_metrics({**final, **members}, step=step)
        run.finish("FINISHED")
        tune.report({**final, "done_full_budget": 1, "epoch_total": step, "finetune": 1,
                     "mlflow_run_id": run.run_id, "model_uri": model_uri, "train_macs_total": result["train_macs"],
                     "family_json": json.dumps(family)})
    except BaseException:
        run.finish("FAILED", error=traceback.format_exc())
        raise


def _model_name(role: str, flops: float) -> str:
    """``student_1p23M``, ``m1_4p56M``: a logged model's name, its role and FLOPs (MLflow's UI lists them so)."""
    return f"{role}_{flops / 1e6:.2f}M".replace(".", "p")


def _restore_newest_checkpoint(storage, work: Path) -> None:
    """Copy into ``work`` the newest complete checkpoint this trial persisted to storage. It can be newer than the
    one Tune restores (``tune.get_checkpoint``, also among them): a driver killed after a trial's report wrote
    its checkpoint, before the experiment snapshot recorded it, restores the trial from the one before, or none.
    Newest by time, as a restarted attempt reuses the indexes; complete, as a node lost while persisting leaves
    a truncated file (a zip without its central directory, which torch.save writes last)."""
    from pyarrow.fs import FileSelector, FileType

    fs = storage.storage_filesystem
    try:
        listing = fs.get_file_info(FileSelector(storage.trial_fs_path, allow_not_found=True))
    except FileNotFoundError:
        # pyarrow's local listing failed (no directory) and its existence check then found one: Tune created the
        # trial's directory in between (seen on a two-node cluster). Created just now, it holds no checkpoint.
        return
    dirs = [i.path for i in listing if i.type == FileType.Directory and i.base_name.startswith("checkpoint_")]
    files = [f for f in fs.get_file_info([f"{d}/{CHECKPOINT}" for d in dirs]) if f.type == FileType.File]
    for f in sorted(files, key=lambda f: f.mtime, reverse=True):
        with tune.Checkpoint(f.path.rsplit("/", 1)[0], filesystem=fs).as_directory() as d:
            if zipfile.is_zipfile(Path(d) / CHECKPOINT):
                shutil.copy2(Path(d) / CHECKPOINT, work / CHECKPOINT)
                return


def _node_id() -> str:
    import ray

    try:
        return ray.get_runtime_context().get_node_id()
    except Exception:
        return os.uname().nodename
