"""Concurrent trials logging to a real MLflow tracking server, some of them failing (the SQLite store's
concurrency is covered by test_search's four-trial smoke search; the two-node cluster by test_cluster)."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from search import run_search

SMOKE = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
# a search small enough for a test: VGG16 at 1/8 width, a 2-epoch teacher (or conftest's tiny_teacher), 1 + 1
# epochs a trial
TINY = {"prune.model.width": 0.125, "prune.teacher.epochs": 2, "prune.schedule.joint_epochs": 1,
        "prune.schedule.finetune_epochs": 1,
        "sampler.name": "random"}

pytestmark = pytest.mark.slow  # real Ray, MLflow and training runs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nested_runs(uri: str, parent: str):
    client = MlflowClient(uri)
    exp = client.get_run(parent).info.experiment_id
    return client, client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent}'")


def assert_every_metric_logged(client, runs, n):
    assert len(runs) == n and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        m = r.data.metrics
        assert {"val_accuracy", "test_accuracy", "flops", "params", "flops_reduction", "member_test_acc/m0"} <= set(m)
        for key in ("val_acc/m0", "loss", "epoch_time"):
            assert len(client.get_metric_history(r.info.run_id, key)) == 2, key  # 1 joint (or distill) + 1 fine-tune
        if r.data.params.get("method", "cascade") == "cascade":
            assert len(client.get_metric_history(r.info.run_id, "kept/m0")) == 1  # logged in the joint phase
        assert r.outputs.model_outputs  # the student is a logged model


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        # without MLflow 3's job runners (GenAI scorers: seven more processes, seconds of start-up CPU)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 600  # a hang's limit: a loaded machine starts the server in minutes, not seconds
    while True:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                proc.kill()
                pytest.fail("mlflow server did not start")
            time.sleep(0.5)
    yield url, tmp_path / "artifacts"
    os.killpg(proc.pid, 9)  # its graceful stop takes seconds; a test store needs none
    proc.wait(timeout=30)


def test_concurrent_trials_log_to_a_tracking_server_and_diverging_ones_fail_cleanly(mlflow_server, tmp_path,
                                                                                   local_ray, tiny_teacher):
    """Four trials, two at a time, through one server. Those whose learning rate makes the loss NaN are FAILED
    in MLflow with their error, FAIL in Optuna (not COMPLETE), off the frontier, and stop no other trial."""
    url, artifacts = mlflow_server
    r = run_search(SMOKE, {**TINY, "prune.teacher.checkpoint": tiny_teacher, "num_trials": 4, "concurrency": 2, "seed": 3,
                           "space.lr": {"choices": [0.01, "1e6"]}, "results_dir": str(tmp_path / "res"),
                           "mlflow.tracking_uri": url})
    bad = [t for t in r.trials if t.config["lr"] == 1e6]
    good = [t for t in r.trials if t.config["lr"] == 0.01]
    assert bad and good, "the seed should sample both learning rates"
    assert all(t.status == "failed" and "not finite" in t.error for t in bad)
    assert r.tracking_uri == url and all(t.finished for t in good)
    assert {t.trial_id for t in r.frontier} <= {t.trial_id for t in good}
    client, runs = nested_runs(url, r.parent_run_id)
    assert len(runs) == 4
    assert_every_metric_logged(client, [run for run in runs if run.info.status != "FAILED"], len(good))
    for t in bad:
        run = client.get_run(t.mlflow_run_id)
        assert run.info.status == "FAILED" and "not finite" in run.data.tags["error"]
    assert client.get_run(r.parent_run_id).info.status == "FINISHED"  # some trials finished
    study = optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(r.run_dir / "optuna.journal"))))
    assert sorted(t.state.name for t in study.trials) == sorted(["FAIL"] * len(bad) + ["COMPLETE"] * len(good))
    import mlflow

    mlflow.set_tracking_uri(url)
    for t in good:  # the students went through the server into its artifact store
        assert r.load_model(t) is not None
    assert any(artifacts.rglob("MLmodel"))
    assert not (tmp_path / "res" / "smoke" / "mlflow.db").exists()
