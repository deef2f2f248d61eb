"""A failing trial (here: a learning rate that makes the loss NaN) is marked failed in Ray, Optuna and
MLflow with its error, never reaches the frontier, and never stops the other trials; a search in which every
trial fails says so: exit 1, a failure summary, the parent run FAILED."""
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search import run_search
from search.cli import main
from search.record import read_trials

SMOKE = Path(__file__).resolve().parents[1] / "spaces" / "smoke.yaml"
TINY = {"teacher.epochs": 2, "budget.joint_epochs": 1, "budget.finetune_epochs": 1, "sampler.name": "random"}

pytestmark = pytest.mark.slow  # real Ray, MLflow and training runs


@pytest.mark.slow
def test_diverging_trials_fail_cleanly_and_stay_off_the_frontier(tmp_path):
    r = run_search(SMOKE, {**TINY, "num_trials": 4, "seed": 3, "space.lr": {"choices": [0.01, "1e6"]},
                           "results_dir": str(tmp_path)})
    bad = [t for t in r.trials if t.config["lr"] == 1e6]
    good = [t for t in r.trials if t.config["lr"] == 0.01]
    assert bad and good, "the seed should sample both learning rates"
    assert all(t.status == "failed" and "not finite" in t.error for t in bad)
    assert all(t.finished for t in good)
    assert {t.trial_id for t in r.frontier} <= {t.trial_id for t in good}
    # MLflow: FAILED with the error; Optuna: FAIL, not COMPLETE
    client = MlflowClient(r.tracking_uri)
    for t in bad:
        run = client.get_run(t.mlflow_run_id)
        assert run.info.status == "FAILED" and "not finite" in run.data.tags["error"]
    assert client.get_run(r.parent_run_id).info.status == "FINISHED"  # some trials finished
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(r.run_dir / "optuna.journal")))
    study = optuna.load_study(study_name="smoke", storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted(["FAIL"] * len(bad) + ["COMPLETE"] * len(good))


@pytest.mark.slow
def test_a_search_where_every_trial_fails_exits_1_with_a_failure_summary(tmp_path, capfd):
    args = ["search", str(SMOKE), "--set", f"results_dir={tmp_path}", "--set", "num_trials=2",
            "--set", "space.lr=1e6"]
    for k, v in TINY.items():
        args += ["--set", f"{k}={v}"]
    assert main(args) == 1
    out, err = capfd.readouterr()
    # the compact progress: counts, one line per failure; none of Tune's tables or known-noise warnings
    assert "trials: 0 running, 0 finished, 2 failed (of 2)" in out
    for noise in ("Configuration for experiment", "snapshotting", "Trial status", "pickle"):
        assert noise not in out + err, noise
    trials = read_trials(tmp_path / "smoke" / "trials.json")
    assert [t.status for t in trials] == ["failed", "failed"]
    for t in trials:  # one summary line per trial: its name, the last error line, its MLflow run
        assert f"{t.name}: FAILED  FloatingPointError: loss is not finite" in out
        assert f"{t.name}: FloatingPointError: loss is not finite" in out and t.mlflow_run_id in out
    assert "no trial finished" in out
    client = MlflowClient(f"sqlite:///{tmp_path / 'smoke' / 'mlflow.db'}")
    parent = client.search_runs([client.get_experiment_by_name("smoke").experiment_id],
                                "tags.search = 'parent'")[0]
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["trials_failed"] == 2 and "not finite" in parent.data.tags["failures"]
