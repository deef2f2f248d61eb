"""A real search end to end: local Ray, MLflow in SQLite under a temp dir, the smoke space."""
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from cascade.engine import evaluate, resolve_device
from cascade.train import load_prune_data
from search import load_config, run_search
from search.cli import main
from search.config import trial_prune_config
from search.frontier import pareto_front

SMOKE = Path(__file__).resolve().parents[1] / "spaces" / "smoke.yaml"
FAST = {"num_trials": 3, "teacher.epochs": 2, "budget.joint_epochs": 1, "budget.finetune_epochs": 1}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    result = run_search(SMOKE, {**FAST, "results_dir": str(root)}, verbose=0)
    return result


@pytest.mark.slow
def test_every_smoke_trial_finishes(smoke):
    assert len(smoke.trials) == 3
    assert [t["status"] for t in smoke.trials] == ["finished"] * 3
    for t in smoke.trials:
        assert 0 < t["flops"] < t["base_flops"] and 0 <= t["accuracy"] <= 100
        assert len(t["overrides"]["cascade.ratios"]) == t["config"]["num_tas"] + 1
    for name in ("frontier.csv", "frontier.png", "trials.json", "search.yaml", "optuna.journal", "mlflow.db"):
        assert (smoke.run_dir / name).exists(), name
    assert any((smoke.run_dir / "artifacts").rglob("MLmodel"))  # artifacts beside the store, not in ./mlruns
    assert not (Path.cwd() / "mlruns").exists()


@pytest.mark.slow
def test_mlflow_holds_parent_and_one_finished_nested_run_per_trial(smoke):
    client = MlflowClient(smoke.tracking_uri)
    parent = client.get_run(smoke.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {"code_version", "config_hash"} <= set(parent.data.tags)
    artifacts = {a.path for a in client.list_artifacts(smoke.parent_run_id)}
    assert {"frontier.csv", "frontier.png", "search.yaml"} <= artifacts
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{smoke.parent_run_id}'")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    for r in runs:
        p, m = r.data.params, r.data.metrics
        n = int(p["num_tas"])
        assert {"student_ratio", "tau", "lambda_kd", "lr", "score_lr", "node_id"} <= set(p)
        assert {f"ratio_m{i}" for i in range(n + 1)} <= set(p)
        assert {"accuracy", "flops", "params", "flops_reduction", "params_reduction"} <= set(m)
        assert {f"val_acc/m{i}" for i in range(n + 1)} <= set(m) and {f"kept/m{i}" for i in range(n + 1)} <= set(m)
        history = client.get_metric_history(r.info.run_id, "val_acc/m0")
        assert len(history) == 2  # one point per epoch (1 joint + 1 fine-tune)


@pytest.mark.slow
def test_frontier_is_the_non_dominated_set_of_finished_trials(smoke):
    done = [t for t in smoke.trials if t["status"] == "finished"]
    expect = {done[i]["trial_id"] for i in pareto_front([(t["accuracy"], t["flops"]) for t in done], ["max", "min"])}
    assert {t["trial_id"] for t in smoke.frontier} == expect
    best = smoke.best(max_flops=max(t["flops"] for t in done))
    assert best["accuracy"] == max(t["accuracy"] for t in done)
    assert smoke.best(max_flops=0) is None


@pytest.mark.slow
def test_logged_student_loads_and_reproduces_its_accuracy(smoke):
    t = smoke.frontier[0]
    mlflow.set_tracking_uri(smoke.tracking_uri)
    model = mlflow.pytorch.load_model(t["model_uri"])
    cfg = trial_prune_config(load_config(smoke.run_dir / "search.yaml"), t["overrides"])
    acc = evaluate(model, load_prune_data(cfg).test, resolve_device("cpu"))
    assert acc == pytest.approx(t["accuracy"], abs=1e-6)
    assert sum(p.numel() for p in model.parameters()) < t["base_params"]


@pytest.mark.slow
def test_frontier_command_reprints_the_table(smoke, capsys):
    assert main(["frontier", str(smoke.run_dir), "--budget", "1e9"]) == 0
    out = capsys.readouterr().out
    assert smoke.frontier[0]["mlflow_run_id"] in out and "best accuracy within" in out


@pytest.mark.parametrize("override,field", [
    ("num_trials=0", "num_trials"),
    ("objectives={accuracy: max, latency: min}", "objectives.latency"),
    ("sampler.name=cmaes-ish", "sampler.name"),
    ("scheduler.name=asha", "scheduler.name"),
    ("space.tau={low: 3.0, high: 1.0}", "space.tau"),
    ("space.lr={low: -1.0, high: 0.1}", "space.lr"),
    ("budget.joint_epochs=0", "budget.joint_epochs"),
    ("model.name=vgg99", "model.name"),
    ("data.name=imagefolder", "data.root"),
    ("concurrency=two", "concurrency"),
    ("surprise=1", "surprise"),
])
def test_bad_search_config_exits_2_before_ray(override, field, tmp_path, capsys):
    import ray

    assert main(["search", str(SMOKE), "--set", f"results_dir={tmp_path / 'r'}", "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}:"), err
    assert not (tmp_path / "r").exists() and not ray.is_initialized()


def test_invalid_yaml_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    assert main(["search", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error: config: invalid YAML")


@pytest.mark.parametrize("name", ["smoke", "cifar10_vgg16", "cifar10_resnet56", "imagenet_resnet50"])
def test_shipped_spaces_validate(name, tmp_path):
    for d in ("train", "val"):
        (tmp_path / d).mkdir()
    cfg = load_config(SMOKE.parent / f"{name}.yaml", [f"data.root={tmp_path}"] if name == "imagenet_resnet50" else [])
    assert cfg.num_trials >= 1 and cfg.parsed_space().max_tas >= 1


def test_unreachable_tracking_server_fails_fast(tmp_path, capsys):
    from test_scale import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["search", str(SMOKE), "--set", f"results_dir={tmp_path / 'r'}", "--set",
                 f"mlflow.tracking_uri={url}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: mlflow.tracking_uri: no MLflow server answers at {url}")
    assert not (tmp_path / "r").exists()
