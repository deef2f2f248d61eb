"""One typed record per trial, from Tune's reports to trials.json, the frontier, the table and the API."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["TrialRecord", "FINAL_KEYS", "read_trials", "write_trials", "run_name", "members"]

# What a finished trial reports once, at the end (besides the sampled config): the exported student's
# validation accuracy (the objective), its test accuracy (reported only), its cost and the teacher's.
FINAL_KEYS = ("val_accuracy", "test_accuracy", "flops", "params", "flops_reduction", "params_reduction",
              "teacher_accuracy", "base_flops", "base_params", "num_classes")


def run_name(config: dict[str, Any]) -> str:
    """``t07-2TA-k0.62`` (``t08-l1-k0.62`` for a peer): the Optuna trial's number, its TA count (or its
    one-shot method) and the student's ratio (a trial's sampled ``config``), readable in MLflow's UI."""
    logged = config["logged"]
    method = logged.get("method", "cascade")
    kind = f"{logged['num_tas']}TA" if method == "cascade" and "num_tas" in logged else method
    ratio = f"-k{float(logged['student_ratio']):.2f}" if "student_ratio" in logged else ""
    return f"t{config.get('number', 0):02d}-{kind}{ratio}"


@dataclass
class TrialRecord:
    trial_id: str
    status: str = "running"                 # running | finished | failed | stopped (by the scheduler)
    name: str = ""                          # the MLflow run name, e.g. t07-2TA-k0.62
    config: dict[str, Any] = field(default_factory=dict)     # sampled and derived hyperparameters
    overrides: dict[str, Any] = field(default_factory=dict)  # the trial's prune-config paths
    epochs: int = 0                         # epochs run over both phases
    phase: str = ""                         # joint (a peer: distill) | finetune (while running)
    val_accuracy: float | None = None       # exported student, validation split: what selection uses
    test_accuracy: float | None = None      # exported student, test split: reported, never selected on
    flops: float | None = None
    params: float | None = None
    flops_reduction: float | None = None
    params_reduction: float | None = None
    teacher_accuracy: float | None = None
    base_flops: float | None = None
    base_params: float | None = None
    num_classes: int | None = None
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    error: str | None = None                # the last line of a failed trial's error
    path: str | None = None                 # the trial's directory in Tune's storage
    phase_epoch: int = 0                    # the running phase's epoch, of phase_epochs
    phase_epochs: int = 0
    train_macs: float = 0.0                 # counted training MACs so far (all of them once finished)
    wall_s: float = 0.0                     # the trial's time, its device held
    member: int = 0                         # 0: the trial's student; j: its TA j (``members``)
    ratio: float | None = None              # the member's ratio
    fine_tuned: bool = True                 # the student always; a TA with schedule.fine_tune: all
    family: list[dict] = field(default_factory=list)  # a finished trial's TAs: member, ratio, accuracies, cost

    @property
    def finished(self) -> bool:
        return self.status == "finished"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrialRecord":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def from_tune(cls, trial_id: str, metrics: dict[str, Any] | None, config: dict[str, Any] | None, *,
                  error: Any = None, path: str | None = None, running: bool = False) -> "TrialRecord":
        """A trial from what Tune holds: its last reported metrics, its sampled config, its error."""
        m, c = metrics or {}, config or {}
        status = ("failed" if error else "finished" if m.get("done_full_budget") else
                  "running" if running else "stopped")
        ratios = c.get("overrides", {}).get("cascade.ratios")
        rec = cls(trial_id=trial_id, status=status, name=run_name(c) if "logged" in c else "", config=c.get("logged", {}),
                  overrides=c.get("overrides", {}), epochs=int(m.get("epoch_total", 0)),
                  phase=m.get("phase", "finetune" if m.get("finetune") else "joint") if m else "",
                  mlflow_run_id=m.get("mlflow_run_id"), model_uri=m.get("model_uri"), path=path,
                  phase_epoch=int(m.get("epoch", 0)), phase_epochs=int(m.get("epochs", 0)),
                  train_macs=float(m.get("train_macs_total", 0.0)), wall_s=float(m.get("time_total_s", 0.0)),
                  ratio=ratios[0] if ratios else None)
        if status == "finished":
            for k in FINAL_KEYS:
                setattr(rec, k, m.get(k))
            rec.family = json.loads(m.get("family_json", "[]"))
        elif status == "running" and "val_accuracy" in m:  # the masked student's last epoch, for progress
            rec.val_accuracy, rec.flops = m.get("val_accuracy"), m.get("flops")
        if error:
            text = str(error).strip()
            rec.error = text.splitlines()[-1][:500] if text else repr(error)
        return rec


def read_trials(path: Path) -> list[TrialRecord]:
    return [TrialRecord.from_dict(d) for d in json.loads(path.read_text())] if path.exists() else []


def write_trials(path: Path, trials: list[TrialRecord]) -> None:
    """Atomically: a reader (``cascade frontier`` while the search runs) never sees half a file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps([t.to_dict() for t in trials], indent=2, default=str))
    os.replace(tmp, path)


def members(trials: list[TrialRecord]) -> list[TrialRecord]:
    """Every member of every trial as its own record: the trial's (its student) and, for a finished trial, one
    per TA (``family``: exported as it trained, or fine-tuned), each a pruned model with its own FLOPs,
    accuracies and logged model, named ``<trial>/m<j>``. The frontier is over these."""
    out = []
    for t in trials:
        out.append(t)
        for f in t.family:
            out.append(dataclasses.replace(
                t, name=f"{t.name}/m{f['member']}", member=f["member"], ratio=f["ratio"],
                val_accuracy=f["val_accuracy"], test_accuracy=f["test_accuracy"], flops=f["flops"],
                params=f["params"], flops_reduction=1 - f["flops"] / t.base_flops,
                params_reduction=1 - f["params"] / t.base_params, model_uri=f.get("model_uri"),
                fine_tuned=f["fine_tuned"], family=[]))
    return out
