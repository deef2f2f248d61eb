"""A search in which every trial fails (here: a learning rate that makes the loss NaN) says so: exit 1, a
compact failure summary, the parent run FAILED. (Failing trials among finishing ones: test_scale.)"""

import pytest
from mlflow.tracking import MlflowClient

from cascade_cli import main
from search.record import read_trials
from test_scale import SMOKE, TINY


pytestmark = pytest.mark.slow  # real Ray, MLflow and training runs


@pytest.mark.slow
def test_a_search_where_every_trial_fails_exits_1_with_a_failure_summary(tmp_path, capfd, local_ray,
                                                                          tiny_teacher):
    args = ["search", str(SMOKE), "--set", f"results_dir={tmp_path}", "--set", "num_trials=2",
            "--set", "space.lr=1e6", "--set", f"prune.teacher.checkpoint={tiny_teacher}"]
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
