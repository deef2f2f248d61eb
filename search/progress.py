"""The driver's view of a running search, as a Ray Tune callback: it keeps one ``TrialRecord`` per trial,
writes them to ``trials.json`` as they change (so ``cascade frontier`` works on a running or interrupted
search), logs the frontier's hypervolume to the parent run as trials finish, and prints a compact progress
report: trials running / finished / failed, each running trial's phase, epoch and validation accuracy, and
the frontier so far."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ray.tune import Callback

from .frontier import frontier_records, hypervolume
from .record import TrialRecord, members, read_trials, write_trials
from .tracking import log_parent

__all__ = ["Progress"]


class Progress(Callback):
    def __init__(self, trials_file: Path, objectives: dict[str, str], *, tracking_uri: str, parent_run_id: str,
                 total: int, show: bool = True, every_s: float = 10.0):
        self.trials_file, self.objectives = trials_file, objectives
        self.tracking_uri, self.parent_run_id = tracking_uri, parent_run_id
        self.total = total
        self.show, self.every_s = show, every_s
        self._records: dict[str, TrialRecord] | None = None
        self._last_print = 0.0

    def __getstate__(self):  # Tune pickles its callbacks with the experiment; a restored one re-reads the file
        return {**self.__dict__, "_records": None, "_last_print": 0.0}

    @property
    def records(self) -> dict[str, TrialRecord]:
        if self._records is None:  # what an interrupted run of this search recorded
            self._records = {t.trial_id: t for t in read_trials(self.trials_file)}
        return self._records

    # ---------------------------------------------------------------- Tune events
    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trial, running=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._update(trial, running=True, result=result, write=False)
        if time.time() - self._last_print >= self.every_s:
            self._print_status()

    def on_trial_complete(self, iteration, trials, trial, **info):
        rec = self._update(trial)
        if rec.finished:
            self._say(f"{rec.name}: finished  val {rec.val_accuracy:.2f}%  test {rec.test_accuracy:.2f}%  "
                      f"{rec.flops / 1e6:.2f}M FLOPs ({rec.flops_reduction:.0%} fewer)"
                      + (f"; {len(rec.family)} TAs recorded beside it" if rec.family else ""))
        else:
            self._say(f"{rec.name or rec.trial_id}: stopped by the scheduler after {rec.epochs} epochs")
        self._log_curve()
        self._print_status()

    def on_trial_error(self, iteration, trials, trial, **info):
        rec = self._update(trial, error=_error_text(trial))
        self._say(f"{rec.name or rec.trial_id}: FAILED  {rec.error}")
        self._log_curve()
        self._print_status()

    def _log_curve(self) -> None:
        """As a trial ends: the frontier's hypervolume (over every member) against the search's counted training
        compute so far (every trial's, stopped and failed ones too), on the parent run and in curve.json."""
        recs = list(self.records.values())
        done = [t for t in recs if t.finished]
        hv = hypervolume(members(done))
        compute = sum(t.train_macs for t in recs)
        metrics = {"trials_finished": len(done), "train_tmacs": compute / 1e12}
        if hv is not None:
            metrics["hypervolume"] = hv
        log_parent(self.tracking_uri, self.parent_run_id, step=len([t for t in recs if t.status != "running"]),
                   metrics=metrics)
        path = self.trials_file.with_name("curve.json")
        curve = json.loads(path.read_text()) if path.exists() else []
        curve.append({"trials_ended": len([t for t in recs if t.status != "running"]),
                      "train_tmacs": compute / 1e12, "hypervolume": hv,
                      "test_hypervolume": hypervolume(members(done), on="test_accuracy"),
                      "student_hypervolume": hypervolume(done),
                      "student_test_hypervolume": hypervolume(done, on="test_accuracy")})
        path.write_text(json.dumps(curve, indent=1))

    # ---------------------------------------------------------------- records and output
    def _update(self, trial, *, running: bool = False, result: dict | None = None, error: str | None = None,
                write: bool = True) -> TrialRecord:
        rec = TrialRecord.from_tune(trial.trial_id, result or trial.last_result, trial.config, error=error,
                                    path=trial.path, running=running)
        self.records[trial.trial_id] = rec
        if write:
            write_trials(self.trials_file, list(self.records.values()))
        return rec

    def _say(self, line: str) -> None:
        if self.show:
            print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)

    def _print_status(self) -> None:
        self._last_print = time.time()
        recs = list(self.records.values())
        count = {s: sum(t.status == s for t in recs) for s in ("running", "finished", "failed", "stopped")}
        self._say(f"trials: {count['running']} running, {count['finished']} finished, {count['failed']} failed"
                  + (f", {count['stopped']} stopped" if count["stopped"] else "") + f" (of {self.total})")
        for t in recs:
            if t.status == "running" and t.epochs:
                flops = f"  ~{t.flops / 1e6:.2f}M FLOPs" if t.flops else ""
                self._say(f"  {t.name or t.trial_id}: {t.phase} epoch {t.phase_epoch}/{t.phase_epochs}  "
                          f"val {t.val_accuracy or 0:.2f}%{flops}")
        front = frontier_records(members(recs), self.objectives)
        if front:
            self._say("  frontier so far: " + ", ".join(f"{t.val_accuracy:.2f}% @ {t.flops / 1e6:.2f}M" for t in front))


def _error_text(trial) -> str:
    """The trial's error as Tune wrote it locally for this failure (its copy in storage syncs later)."""
    path = trial.error_file
    if path and Path(path).is_file():
        return Path(path).read_text()
    return str(getattr(trial, "error_msg", None) or "unknown error")
