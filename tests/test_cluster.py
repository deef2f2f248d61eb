"""A real two-node Ray cluster (`ray start` twice on this machine, token auth) driven through the README's
`ray job submit --working-dir .` command, and the loss of its worker node mid-search."""
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from test_scale import SMOKE, TINY, free_port

pytestmark = pytest.mark.slow  # real Ray, MLflow and training runs

# Every wait below ends on an event (a file, a job status); this limit only stops a hang. It is not a speed
# requirement: on a 2-core machine shared with two other jobs the README's job took 800 s, where alone it takes 120.
PATIENCE = 1800


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


@pytest.fixture(scope="module")
def two_nodes():
    """A real two-node Ray cluster on this machine: `ray start --head` plus a second `ray start --address`
    node (with a `worker_node` resource to tell it apart), token auth on. Every process it started is ended.
    Shared by this module's cluster tests; the lost-node test, which kills the worker, comes last."""
    if shutil.which("ray") is None:
        pytest.skip("the ray CLI is not installed")
    temp = Path(f"/tmp/rt{os.getpid()}")  # short: Ray's socket paths must stay under 108 characters; the
    # worker node's is f"{temp}w", so every process of the cluster names str(temp) in its command line
    gcs, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "CASCADE_CACHE": os.environ["CASCADE_CACHE"],
           "RAY_USAGE_STATS_ENABLED": "0",
           # a lost node is declared dead after 3 missed 1 s health checks (Ray's default: 5 of 3 s)
           "RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3"}
    env.pop("MLFLOW_TRACKING_URI", None)  # jobs log to the default store under their results_dir
    ray = shutil.which("ray")

    def agent_ports() -> list[str]:
        """Free ports for a node's agents: Ray's defaults are fixed (the job agent's 52365), and with another
        Ray instance on this machine (conftest's local_ray) the job agent was never reachable ("No available
        agent to submit job")."""
        return [f"--{name}={free_port()}" for name in ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                                                       "runtime-env-agent-port", "metrics-export-port")]

    try:
        subprocess.run([ray, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}", "--num-cpus=1",
                        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                        f"--ray-client-server-port={free_port()}", *agent_ports(), f"--temp-dir={temp}"],
                       env=env, check=True, capture_output=True, timeout=180)
        # its own temp dir, as a second machine has: nodes sharing one would share the unpacked `--working-dir`
        # package, and one node re-unpacking it would pull the directory from under the other's job driver
        subprocess.run([ray, "start", f"--address=127.0.0.1:{gcs}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        '--resources={"worker_node": 1}', *agent_ports(), f"--temp-dir={temp}w"], env=env,
                       check=True, capture_output=True, timeout=180)
        yield f"http://127.0.0.1:{dash}", env, str(temp)
    finally:
        def cluster() -> list[int]:  # naming the temp dir or the GCS address (Ray's client server: only that)
            return sorted(set(_ray_processes(str(temp)) + _ray_processes(f":{gcs}\0")))

        for pid in cluster():
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
        time.sleep(1)
        left = cluster()
        shutil.rmtree(temp, ignore_errors=True)
        shutil.rmtree(f"{temp}w", ignore_errors=True)
        assert not left, f"processes left behind: {left}"


def submit(dashboard: str, env: dict, overrides: dict, *, wait: bool = True) -> subprocess.CompletedProcess:
    sets = [a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]
    cmd = [shutil.which("ray"), "job", "submit", f"--address={dashboard}", *([] if wait else ["--no-wait"]), "--",
           "cascade", "search", str(SMOKE), *sets]
    return with_agent(lambda: subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=PATIENCE))


def with_agent(submit_job) -> subprocess.CompletedProcess:
    """Retry a submission while the job agent is not up: it comes up a while after `ray start` returns, minutes
    on a loaded machine."""
    deadline = time.time() + PATIENCE
    while True:
        job = submit_job()
        if "No available agent" not in job.stderr or time.time() > deadline:
            return job
        time.sleep(3)


def trial_runs(results: Path):
    client = MlflowClient(f"sqlite:///{results / 'smoke' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("smoke")
    return [r for r in client.search_runs([exp.experiment_id]) if "trial" in r.data.tags] if exp else []


ROOT = SMOKE.parents[1]


def readme_submit_command() -> str:
    """The README's `ray job submit --working-dir .` command, as written there (continuation lines joined)."""
    text = (ROOT / "README.md").read_text()
    m = re.search(r"^(ray job submit --working-dir \. .*?)$", text.replace("\\\n", " "), re.M)
    assert m, "the README documents no `ray job submit --working-dir .` command"
    return m.group(1)


def test_the_readmes_job_submit_command_runs_verbatim_on_two_nodes_with_shared_storage(two_nodes, tmp_path):
    """From a copy of the project (what `--working-dir .` ships), with the README's environment: the results
    land in $SHARED/results/smoke, Tune's experiment and the teacher in $SHARED/storage, trials on both nodes,
    nothing in the shipped copy."""
    dashboard, env, _ = two_nodes
    project = tmp_path / "project"
    project.mkdir()
    for name in ("cascade", "search", "spaces", "configs"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "cascade_cli.py"):
        shutil.copy2(ROOT / name, project / name)
    shared = tmp_path / "shared"
    command = readme_submit_command()
    env = {**env, "RAY_ADDRESS": dashboard, "SHARED": str(shared)}
    job = with_agent(lambda: subprocess.run(["bash", "-c", command], cwd=project, env=env, capture_output=True,
                                            text=True, timeout=PATIENCE))
    out = job.stdout + job.stderr
    assert job.returncode == 0, out[-4000:]
    assert "succeeded" in out.lower() and "val %" in out  # the job printed its frontier table
    trials = json.loads((shared / "results" / "smoke" / "trials.json").read_text())
    assert len(trials) == 4 and all(t["status"] == "finished" for t in trials)
    assert len(list((shared / "storage" / "smoke" / "tune").glob("trial_*/checkpoint_*"))) == 4
    assert len(list((shared / "storage" / "teachers").glob("*/teacher.pt"))) == 1
    assert (shared / "results" / "smoke" / "frontier.png").exists()
    assert not (project / "results").exists() and not (shared / "results" / "smoke" / "tune").exists()
    runs = trial_runs(shared / "results")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)
    assert len({r.data.params["node_id"] for r in runs}) == 2  # trials ran on both nodes


def test_lost_worker_node_trials_are_rescheduled(two_nodes, tmp_path, tiny_teacher):
    """Kill the worker node's raylet mid-trial: its trial is retried (from its checkpoint) on the head."""
    dashboard, env, temp = two_nodes
    job = submit(dashboard, env, {**TINY, "prune.teacher.checkpoint": tiny_teacher, "num_trials": 2, "concurrency": 2,
                                  "resources.cpu": 1, "max_retries": 2, "prune.schedule.joint_epochs": 3,
                                  "results_dir": str(tmp_path)}, wait=False)
    assert job.returncode == 0, job.stderr[-2000:]
    job_id = re.search(r"raysubmit_\w+", job.stdout + job.stderr).group(0)
    tune_dir = tmp_path / "smoke" / "tune"
    deadline = time.time() + PATIENCE
    while time.time() < deadline:  # both trials running, each with a checkpoint
        trials = list(tune_dir.glob("trial_*")) if tune_dir.exists() else []
        if len(trials) == 2 and all(any(t.glob("checkpoint_*")) for t in trials):
            break
        time.sleep(0.5)
    else:
        raise AssertionError("the trials did not start on both nodes")
    raylets = [pid for pid in _ray_processes(temp) if "worker_node" in Path(f"/proc/{pid}/cmdline").read_text(
        errors="ignore") and "raylet" in Path(f"/proc/{pid}/cmdline").read_text(errors="ignore")]
    assert len(raylets) == 1
    os.kill(raylets[0], 9)
    frontier = tmp_path / "smoke" / "frontier.csv"
    while time.time() < deadline and not frontier.exists():  # written as the search ends; a file read,
        time.sleep(0.5)  # not a `ray job status` process (a second of CPU each) beside the trials on 2 cores
    status = ""
    while time.time() < deadline:
        p = subprocess.run([shutil.which("ray"), "job", "status", f"--address={dashboard}", job_id],
                           env=env, capture_output=True, text=True)
        status = (p.stdout + p.stderr).lower()
        if any(f"job '{job_id.lower()}' {s}" in status for s in ("succeeded", "failed", "stopped")):
            break
        time.sleep(2)
    assert f"job '{job_id.lower()}' succeeded" in status, status
    trials = json.loads((tmp_path / "smoke" / "trials.json").read_text())
    assert sorted(t["status"] for t in trials) == ["finished", "finished"]
    runs = trial_runs(tmp_path)
    assert len(runs) == 2  # the retried trial reused its MLflow run
