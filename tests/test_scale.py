"""Scale-out with real components: concurrent trials on one SQLite store, an MLflow tracking server, and a
two-node Ray cluster (`ray start` twice on this machine) driven through `ray job submit`."""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from search import run_search

SMOKE = Path(__file__).resolve().parents[1] / "spaces" / "smoke.yaml"
TINY = {"teacher.epochs": 2, "budget.joint_epochs": 1, "budget.finetune_epochs": 1, "sampler.name": "random"}


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
        assert {"accuracy", "flops", "params", "flops_reduction", "member_test_acc/m0"} <= set(m)
        for key in ("val_acc/m0", "loss", "epoch_time"):
            assert len(client.get_metric_history(r.info.run_id, key)) == 2, key  # 1 joint + 1 fine-tune epoch
        assert len(client.get_metric_history(r.info.run_id, "kept/m0")) == 1  # logged in the joint phase
        assert r.outputs.model_outputs  # the student is a logged model


def test_four_concurrent_trials_lose_no_write_on_sqlite(tmp_path):
    r = run_search(SMOKE, {**TINY, "num_trials": 4, "concurrency": 4, "resources.cpu": 0.5,
                           "results_dir": str(tmp_path)}, verbose=0)
    assert [t["status"] for t in r.trials] == ["finished"] * 4
    client, runs = nested_runs(r.tracking_uri, r.parent_run_id)
    assert_every_metric_logged(client, runs, 4)


@pytest.fixture
def mlflow_server(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "artifacts")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=1).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start")
    yield url, tmp_path / "artifacts"
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_concurrent_trials_log_to_a_tracking_server(mlflow_server, tmp_path):
    url, artifacts = mlflow_server
    r = run_search(SMOKE, {**TINY, "num_trials": 2, "concurrency": 2, "results_dir": str(tmp_path / "res"),
                           "mlflow.tracking_uri": url}, verbose=0)
    assert r.tracking_uri == url and [t["status"] for t in r.trials] == ["finished"] * 2
    client, runs = nested_runs(url, r.parent_run_id)
    assert_every_metric_logged(client, runs, 2)
    import mlflow

    mlflow.set_tracking_uri(url)
    for t in r.trials:  # the students went through the server into its artifact store
        assert mlflow.pytorch.load_model(t["model_uri"]) is not None
    assert any(artifacts.rglob("MLmodel"))
    assert not (tmp_path / "res" / "smoke" / "mlflow.db").exists()


def _ray_processes(marker: str) -> list[int]:
    """Processes whose command line names ``marker`` (the cluster's temp dir), and all their descendants."""
    cmd, parent = {}, {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                cmd[int(p.name)] = (p / "cmdline").read_bytes().decode(errors="ignore")
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found = {pid for pid, c in cmd.items() if marker in c and pid != os.getpid()}
    while True:
        more = {pid for pid, pp in parent.items() if pp in found} - found
        if not more:
            return sorted(found)
        found |= more


@pytest.mark.skipif(shutil.which("ray") is None, reason="the ray CLI is not installed")
def test_two_node_cluster_runs_a_search_submitted_as_a_job(tmp_path):
    temp = Path(f"/tmp/rt{os.getpid()}")  # short: Ray's socket paths must stay under 108 characters
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "CASCADE_CACHE": os.environ["CASCADE_CACHE"],
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("MLFLOW_TRACKING_URI", None)  # the job logs to the default store under results_dir
    ray = shutil.which("ray")
    try:
        subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=1",
                        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                        f"--temp-dir={temp}"], env=env, check=True, capture_output=True, timeout=180)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1"], env=env, check=True, capture_output=True, timeout=180)
        overrides = {**TINY, "num_trials": 2, "concurrency": 2, "resources.cpu": 1, "results_dir": str(tmp_path)}
        sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
        for _ in range(30):  # the job agent comes up a little after `ray start` returns
            job = subprocess.run(
                [ray, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--",
                 "cascade", "search", str(SMOKE), "--verbose", "0", *sets],
                env=env, capture_output=True, text=True, timeout=600)
            if "No available agent" not in job.stderr:
                break
            time.sleep(3)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in (job.stdout + job.stderr).lower()
        uri = f"sqlite:///{tmp_path / 'smoke' / 'mlflow.db'}"
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("smoke")
        runs = [r for r in client.search_runs([exp.experiment_id]) if "trial" in r.data.tags]
        assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
        assert len({r.data.params["node_id"] for r in runs}) == 2  # one trial on each node
    finally:
        for pid in _ray_processes(str(temp)):
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(1)
        left = _ray_processes(str(temp))
        shutil.rmtree(temp, ignore_errors=True)
    assert not left, f"processes left behind: {left}"
