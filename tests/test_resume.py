"""`cascade resume`: a search whose driver is killed hard (SIGKILL) mid-way ends with exactly the configured
trials in Ray's results, the Optuna study and MLflow, and an interrupted trial goes on from its last checkpoint in
its own MLflow run, even one Tune's experiment snapshot never recorded."""
import json
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from mlflow.tracking import MlflowClient

from cascade_cli import main
from search.record import read_trials
from test_scale import SMOKE, TINY


def test_a_trial_restores_its_newest_complete_checkpoint(tmp_path):
    """The newest persisted checkpoint wins over the one Tune knows of; a truncated one (a node lost while
    persisting) is passed over; a trial with none starts afresh."""
    from types import SimpleNamespace

    import torch
    from pyarrow.fs import FileSelector, LocalFileSystem

    from cascade.train import CHECKPOINT
    from search.trainable import _restore_newest_checkpoint

    trial_dir = tmp_path / "trial_x"
    storage = SimpleNamespace(storage_filesystem=LocalFileSystem(), trial_fs_path=str(trial_dir))
    work = tmp_path / "work"
    work.mkdir()
    _restore_newest_checkpoint(storage, work)  # no trial dir yet
    assert not (work / CHECKPOINT).exists()

    class RacingFS(LocalFileSystem):
        """pyarrow when Tune creates the trial's directory between its listing and its existence check."""
        def get_file_info(self, what):
            if isinstance(what, FileSelector):
                raise FileNotFoundError(f"Cannot list directory '{what.base_dir}'")
            return super().get_file_info(what)

    _restore_newest_checkpoint(SimpleNamespace(storage_filesystem=RacingFS(), trial_fs_path=str(trial_dir)), work)
    assert not (work / CHECKPOINT).exists()  # a trial starting afresh, not a failed one
    for i, epoch in enumerate([1, 3, 2]):  # index 1 holds the newest state: a restarted attempt reused index 0
        path = trial_dir / f"checkpoint_00000{i}" / CHECKPOINT
        path.parent.mkdir(parents=True)
        torch.save({"epoch": epoch}, path)
        os.utime(path, (1000 + 10 * epoch, 1000 + 10 * epoch))
    _restore_newest_checkpoint(storage, work)
    assert torch.load(work / CHECKPOINT)["epoch"] == 3
    newest = trial_dir / "checkpoint_000001" / CHECKPOINT
    newest.write_bytes(newest.read_bytes()[:-30])  # truncated: falls back to the next newest
    _restore_newest_checkpoint(storage, work)
    assert torch.load(work / CHECKPOINT)["epoch"] == 2


@pytest.mark.slow
def test_killed_search_resumes_without_losing_or_repeating_trials(tmp_path, capsys, local_ray, tiny_teacher):
    sets = [f"prune.model.width={TINY['prune.model.width']}", "num_trials=2", "concurrency=1",
            f"prune.teacher.checkpoint={tiny_teacher}", "prune.schedule.joint_epochs=2",
            "prune.schedule.finetune_epochs=1", "resources.cpu=2", f"results_dir={tmp_path}"]
    cmd = [sys.executable, "-m", "cascade_cli", "search", str(SMOKE)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    run_dir = tmp_path / "smoke"
    deadline = time.time() + 1800  # a hang's limit, not a speed requirement: each wait ends on an event

    def wait_for(what: str, done) -> None:
        while not done():
            assert proc.poll() is None, f"the search ended before {what}"
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.5)

    def nested_runs() -> list:
        state = json.loads((run_dir / "search.json").read_text())
        client = MlflowClient(state["tracking_uri"])
        return client.search_runs([state["experiment_id"]], f"tags.mlflow.parentRunId = '{state['parent_run_id']}'")

    # The hardest moment to die: the second trial has written its first epoch's checkpoint to storage, but the
    # driver has not yet recorded it in Tune's experiment snapshot, so Tune restores that trial without one.
    # Made deterministic by freezing the driver (SIGSTOP) once the trial has begun: its worker goes on and persists
    # the checkpoint, the driver never hears of it.
    wait_for("the second trial began", lambda: (run_dir / "search.json").exists() and len(nested_runs()) == 2)
    time.sleep(1)  # the driver's snapshot of the first trial's end
    proc.send_signal(signal.SIGSTOP)
    tune_dir = run_dir / "tune"
    wait_for("the second trial's checkpoint", lambda: len(list(tune_dir.glob("trial_*/checkpoint_*"))) == 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    time.sleep(2)
    # what was recorded so far: the first trial finished, the second running when the driver died
    assert sorted(t.status for t in read_trials(run_dir / "trials.json")) == ["finished", "running"]
    assert main(["frontier", str(run_dir)]) == 0  # the frontier of an interrupted search
    assert "1 finished, 1 running" in capsys.readouterr().out.replace("trials: ", "")

    assert main(["resume", str(run_dir)]) == 0
    trials = [t.to_dict() for t in read_trials(run_dir / "trials.json")]
    assert len(trials) == 2 and all(t["status"] == "finished" for t in trials)
    assert len({t["trial_id"] for t in trials}) == 2
    state = json.loads((run_dir / "search.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    exp = client.get_run(state["parent_run_id"]).info.experiment_id
    runs = client.search_runs([exp], f"tags.mlflow.parentRunId = '{state['parent_run_id']}'")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)  # reused, not forked
    assert {r.info.run_id for r in runs} == {t["mlflow_run_id"] for t in trials}
    for r in runs:  # the interrupted trial went on from its checkpoint: no epoch logged twice
        steps = sorted(m.step for m in client.get_metric_history(r.info.run_id, "val_acc/m0"))
        assert steps == [1, 2, 3], steps
    study = optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(run_dir / "optuna.journal"))))
    assert sorted(t.state.name for t in study.trials) == ["COMPLETE"] * 2
