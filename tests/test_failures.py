"""A failing trial (here: a learning rate that makes the loss NaN) is marked failed in Ray, Optuna and
MLflow with its error, never reaches the frontier, and never stops the other trials."""
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search import run_search

SMOKE = Path(__file__).resolve().parents[1] / "spaces" / "smoke.yaml"

pytestmark = pytest.mark.slow  # real Ray, MLflow and training runs


def test_diverging_trials_fail_cleanly_and_stay_off_the_frontier(tmp_path):
    r = run_search(SMOKE, {"num_trials": 4, "teacher.epochs": 2, "budget.joint_epochs": 1,
                           "budget.finetune_epochs": 1, "sampler.name": "random", "seed": 3,
                           "space.lr": {"choices": [0.01, "1e6"]}, "results_dir": str(tmp_path)}, verbose=0)
    bad = [t for t in r.trials if t["config"]["lr"] == 1e6]
    good = [t for t in r.trials if t["config"]["lr"] == 0.01]
    assert bad and good, "the seed should sample both learning rates"
    assert all(t["status"] == "failed" and "not finite" in t["error"] for t in bad)
    assert all(t["status"] == "finished" for t in good)
    assert {t["trial_id"] for t in r.frontier} <= {t["trial_id"] for t in good}
    # MLflow: FAILED with the error; Optuna: FAIL, not COMPLETE
    client = MlflowClient(r.tracking_uri)
    for t in bad:
        run = client.get_run(t["mlflow_run_id"])
        assert run.info.status == "FAILED" and "not finite" in run.data.tags["error"]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(r.run_dir / "optuna.journal")))
    study = optuna.load_study(study_name="smoke", storage=storage)
    states = sorted(t.state.name for t in study.trials)
    assert states == sorted(["FAIL"] * len(bad) + ["COMPLETE"] * len(good))
