"""The layering: ``cascade`` never imports ray, optuna or mlflow; ``spaces`` (the YAML spaces and their
validation) and the benchmarks import without them too. Checked in a fresh interpreter whose import system
refuses those packages."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BLOCKER = """
import importlib.abc, importlib.util, sys
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "optuna", "mlflow"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Refuse())
"""


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKER + code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})


def test_the_blocker_blocks():
    p = _run("import optuna")
    assert p.returncode != 0 and "blocked in this test" in p.stderr


def test_cascade_spaces_and_bench_import_without_ray_optuna_mlflow():
    code = """
import importlib.util
import cascade, cascade.cli, cascade.teacher, cascade.train, spaces
from spaces import parse_space, member_ratios
space = parse_space({"num_tas": {"low": 0, "high": 3}, "tau": {"low": 1.0, "high": 9.0, "log": True}})
assert space.max_tas == 3 and member_ratios(0.6, 2)[-1] == 0.0
for name in ("quality", "throughput", "latency"):
    spec = importlib.util.spec_from_file_location(name, f"bench/{name}.py")
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
print("ok")
"""
    p = _run(code)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
