"""A real search end to end: local Ray, MLflow in SQLite under a temp dir, the smoke space; four trials at
once, so four processes write the one SQLite store concurrently."""
import importlib.util
import json
import os
import shutil
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from cascade.engine import evaluate, resolve_device
from cascade.train import load_prune_data
from cascade_cli import main
from search import load_config, run_search
from search.config import trial_prune_config
from search.frontier import pareto_front
from search.tracking import VIEW_KEY
from test_scale import SMOKE

ROOT = Path(__file__).resolve().parents[1]
FAST = {"num_trials": 4, "concurrency": 4, "resources.cpu": 0.5, "prune.teacher.epochs": 2,
        "prune.schedule.joint_epochs": 1, "prune.schedule.finetune_epochs": 1}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, local_ray):
    """The smoke search, with storage apart from the results dir; the driver process cannot train a teacher
    (train_teacher raises here), so the search passes only if a Ray worker trained it."""
    root = tmp_path_factory.mktemp("search")

    def no_training_in_the_driver(*a, **k):
        raise AssertionError("the driver trained the teacher")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("cascade.teacher.train_teacher", no_training_in_the_driver)
        result = run_search(SMOKE, {**FAST, "results_dir": str(root / "results"), "storage": str(root / "shared")},
                            verbose=0)
    result.storage = root / "shared"
    return result


@pytest.mark.slow
def tas_of(t) -> int:
    """A trial's sampled TA count; a peer is one model, with no ladder."""
    return t.config["num_tas"] if t.config.get("method", "cascade") == "cascade" else 0


def test_every_smoke_trial_finishes(smoke):
    assert len(smoke.trials) == 4
    assert [t.status for t in smoke.trials] == ["finished"] * 4
    for t in smoke.trials:
        assert 0 < t.flops < t.base_flops and 0 <= t.val_accuracy <= 100 and 0 <= t.test_accuracy <= 100
        method, tas = t.config.get("method", "cascade"), tas_of(t)
        assert len(t.overrides["cascade.ratios"]) == tas + 1
        label = f"{tas}TA" if method == "cascade" else method
        assert t.name == f"t{t.name[1:3]}-{label}-k{t.config['student_ratio']:.2f}"
    for name in ("frontier.csv", "frontier.png", "trials.json", "search.yaml", "optuna.journal", "mlflow.db"):
        assert (smoke.run_dir / name).exists(), name
    assert any((smoke.run_dir / "artifacts").rglob("MLmodel"))  # artifacts beside the store, not in ./mlruns
    assert not (Path.cwd() / "mlruns").exists()
    header = (smoke.run_dir / "frontier.csv").read_text().splitlines()[0].split(",")
    assert {"val_accuracy", "test_accuracy", "member", "fine_tuned"} <= set(header)
    # every member is a point: a trial with n TAs records n of them beside its student, each counted and logged
    for t in smoke.trials:
        assert [f["member"] for f in t.family] == list(range(1, tas_of(t) + 1))
        for f in t.family:
            assert (f["model_uri"] is None) == (f["ratio"] == 0.0) and f["fine_tuned"] is False
            assert 0 < f["flops"] <= t.base_flops
        assert t.train_macs > 0 and t.wall_s > 0
    assert any(t.family for t in smoke.trials)  # the smoke's draws include a cascade with a TA
    assert len(smoke.members) == 4 + sum(len(t.family) for t in smoke.trials)
    curve = json.loads((smoke.run_dir / "curve.json").read_text())
    assert len(curve) == 4 and [c["train_tmacs"] for c in curve] == sorted(c["train_tmacs"] for c in curve)
    assert curve[-1]["hypervolume"] == pytest.approx(smoke.hypervolume)
    assert (smoke.run_dir / "hypervolume.png").exists()


@pytest.mark.slow
def test_tune_state_and_the_teacher_live_in_storage_trained_by_a_worker(smoke):
    assert not (smoke.run_dir / "tune").exists()
    assert len(list((smoke.storage / "smoke" / "tune").glob("trial_*/checkpoint_*"))) == 4
    (teacher,) = (smoke.storage / "teachers").glob("*/teacher.pt")
    info = json.loads((teacher.parent / "config.json").read_text())
    assert info["trained_by_pid"] != os.getpid() and info["test_accuracy"] > 10


@pytest.mark.slow
def test_optuna_optimised_validation_accuracy_and_knows_each_mlflow_run(smoke):
    study = optuna.load_study(study_name="smoke", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(smoke.run_dir / "optuna.journal"))))
    by_run = {t.mlflow_run_id: t for t in smoke.trials}
    assert len(study.trials) == 4
    for ot in study.trials:
        t = by_run[ot.user_attrs["mlflow_run_id"]]
        assert ot.values == [t.val_accuracy, t.flops]  # the objective is validation, never test
        assert t.name.startswith(f"t{ot.number:02d}-")
    assert study.metric_names == ["val_accuracy", "flops"]  # optuna-dashboard names the objectives


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="no chromium here (apt-get install chromium)")
def test_mlflow_ui_opens_on_the_trials_in_a_fresh_browser(smoke):
    """bench/mlflow_ui_check.py: `mlflow ui` on the store, the printed link in a fresh headless Chromium: the runs
    as model training (not the GenAI overview), the trials listed flat, the metric columns shown."""
    spec = importlib.util.spec_from_file_location("ui", ROOT / "bench" / "mlflow_ui_check.py")
    ui = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ui)
    seen = ui.check(smoke.run_dir)
    assert sorted(seen["trial_names"]) == sorted(t.name for t in smoke.trials)


@pytest.mark.slow
def test_mlflow_holds_parent_and_one_finished_nested_run_per_trial(smoke):
    client = MlflowClient(smoke.tracking_uri)
    parent = client.get_run(smoke.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert {"code_version", "config_hash"} <= set(parent.data.tags)
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # MLflow's UI opens the runs table
    assert parent.inputs.dataset_inputs[0].dataset.name == "digits"
    assert 0 < parent.data.metrics["hypervolume"] <= 1
    assert len(client.get_metric_history(smoke.parent_run_id, "hypervolume")) >= 3  # logged as trials finished
    assert parent.data.metrics["hypervolume"] == pytest.approx(smoke.hypervolume)
    artifacts = {a.path for a in client.list_artifacts(smoke.parent_run_id)}
    assert {"frontier.csv", "frontier.png", "search.yaml"} <= artifacts
    versions = client.search_model_versions("name = 'cascade-smoke'")
    registered = [t for t in smoke.frontier if t.val_accuracy >= 100 / 10 + 10 and t.model_uri]  # chance + 10
    assert len(versions) == len(registered)
    aliases = {a for v in versions for a in client.get_model_version("cascade-smoke", v.version).aliases}
    assert aliases == {f"flops_{t.flops / 1e6:.2f}M".replace(".", "p") for t in registered}
    names = {m.name for m in client.search_logged_models(experiment_ids=[parent.info.experiment_id])}
    logged = [t for t in smoke.members if t.model_uri]  # students and pruned TAs, named by role and FLOPs
    assert names == {(f"m{t.member}" if t.member else "student") + f"_{t.flops / 1e6:.2f}M".replace(".", "p")
                     for t in logged}
    assert f"mlflow.sharedViewState.{VIEW_KEY}" in exp.tags
    runs = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{smoke.parent_run_id}'")
    assert len(runs) == 4 and all(r.info.status == "FINISHED" for r in runs)  # no write lost to SQLite locks
    assert {r.info.run_name for r in runs} == {t.name for t in smoke.trials}
    for r in runs:
        assert r.inputs.dataset_inputs and r.inputs.dataset_inputs[0].dataset.name == "digits"
        p, m = r.data.params, r.data.metrics
        cascade = p.get("method", "cascade") == "cascade"
        n = int(p["num_tas"]) if cascade else 0
        assert {"student_ratio", "tau", "lambda_kd", "lr", "node_id"} <= set(p)
        assert ("score_lr" in p) == cascade  # a peer draws no cascade-only value
        assert {f"ratio_m{i}" for i in range(n + 1)} <= set(p)
        assert {"val_accuracy", "test_accuracy", "flops", "params", "flops_reduction", "params_reduction"} <= set(m)
        assert {f"val_acc/m{i}" for i in range(n + 1)} <= set(m)
        for key in ("val_acc/m0", "loss", "epoch_time"):  # one point per epoch (joint or distill, fine-tune)
            assert len(client.get_metric_history(r.info.run_id, key)) == 2, key
        if cascade:
            assert {f"kept/m{i}" for i in range(n + 1)} <= set(m)
            assert len(client.get_metric_history(r.info.run_id, "kept/m0")) == 1  # logged in the joint phase
        assert r.outputs.model_outputs  # the student is a logged model


@pytest.mark.slow
def test_frontier_is_the_non_dominated_set_of_every_finished_member_on_validation(smoke):
    done = smoke.members
    expect = {done[i].name for i in pareto_front([(t.val_accuracy, t.flops) for t in done], ["max", "min"])}
    assert {t.name for t in smoke.frontier} == expect
    best = smoke.best(max_flops=max(t.flops for t in done))
    assert best.val_accuracy == max(t.val_accuracy for t in done)
    assert smoke.best(max_flops=0) is None


@pytest.mark.slow
def test_logged_members_load_and_reproduce_their_accuracies(smoke):
    students = [t for t in smoke.frontier if t.member == 0]
    tas = [t for t in smoke.members if t.member and t.model_uri]
    for t in students[:1] + tas[:1]:
        model = smoke.load_model(t)
        cfg = trial_prune_config(load_config(smoke.run_dir / "search.yaml", stored=True), t.overrides)
        data = load_prune_data(cfg)
        assert evaluate(model, data.test, resolve_device("cpu")) == pytest.approx(t.test_accuracy, abs=1e-4)
        assert evaluate(model, data.val, resolve_device("cpu")) == pytest.approx(t.val_accuracy, abs=1e-4)
        assert sum(p.numel() for p in model.parameters()) < t.base_params


@pytest.mark.slow
def test_frontier_command_reprints_the_table_without_the_data(smoke, tmp_path, capsys):
    """From a copy of the search whose data root exists nowhere here: the frontier needs only the records."""
    copy = tmp_path / "smoke"
    copy.mkdir()
    for name in ("search.yaml", "search.json", "trials.json"):
        (copy / name).write_bytes((smoke.run_dir / name).read_bytes())
    cfg = yaml.safe_load((copy / "search.yaml").read_text())
    cfg["prune"]["data"].update(name="imagefolder", root="/nonexistent/data")
    (copy / "search.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["frontier", str(copy), "--budget", "1G"]) == 0
    out = capsys.readouterr().out
    assert smoke.frontier[0].mlflow_run_id in out and "best validation accuracy within" in out
    assert "val %" in out and "test %" in out and (copy / "frontier.png").exists()


@pytest.mark.parametrize("override,field", [
    ("num_trials=0", "num_trials"),
    ("objectives={val_accuracy: max, latency: min}", "objectives.latency"),
    ("objectives={accuracy: max, flops: min}", "objectives.accuracy"),  # the test split never selects
    ("sampler.name=cmaes-ish", "sampler.name"),
    ("scheduler.name=asha", "scheduler.name"),
    ("space.tau={low: 3.0, high: 1.0}", "space.tau"),
    ("space.lr={low: -1.0, high: 0.1}", "space.lr"),
    ("prune.schedule.joint_epochs=0", "prune.schedule.joint_epochs"),
    ("prune.model.name=vgg99", "prune.model.name"),
    ("prune.data.name=imagefolder", "prune.data.root"),
    ("concurrency=two", "concurrency"),
    ("surprise=1", "surprise"),
])
def test_bad_search_config_exits_2_before_ray(override, field, tmp_path, capsys, ray_forbidden):
    assert main(["search", str(SMOKE), "--set", f"results_dir={tmp_path / 'r'}", "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}:"), err
    assert not (tmp_path / "r").exists()


def test_invalid_yaml_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    assert main(["search", str(bad)]) == 2
    assert capsys.readouterr().err.startswith("error: config: invalid YAML")


@pytest.mark.parametrize("name", ["smoke", "cifar10_vgg16", "cifar10_resnet56", "imagenet_resnet50"])
def test_shipped_spaces_validate(name, tmp_path):
    for d in ("train", "val"):
        (tmp_path / d).mkdir()
    extra = [f"prune.data.root={tmp_path}"] if name == "imagenet_resnet50" else []
    cfg = load_config(SMOKE.parent / f"{name}.yaml", extra)
    assert cfg.num_trials >= 1 and cfg.parsed_space.max_tas >= 1


def test_unreachable_tracking_server_fails_fast(tmp_path, capsys, ray_forbidden):
    from test_scale import free_port

    url = f"http://127.0.0.1:{free_port()}"
    assert main(["search", str(SMOKE), "--set", f"results_dir={tmp_path / 'r'}", "--set",
                 f"mlflow.tracking_uri={url}"]) == 2
    assert capsys.readouterr().err.startswith(f"error: mlflow.tracking_uri: no MLflow server answers at {url}")
    assert not (tmp_path / "r").exists()


def test_set_reaches_into_prune_and_space_and_print_config_shows_it(tmp_path, capsys):
    assert main(["search", str(SMOKE), "--set", f"results_dir={tmp_path / 'r'}",
                 "--set", "prune.optim.weight_decay=1e-3", "--set", "space.tau.high=30",
                 "--set", "space.optim.momentum={low: 0.8, high: 0.95}", "--print-config"]) == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["prune"]["optim"]["weight_decay"] == 1e-3 and cfg["prune"]["model"]["width"] == 0.125
    assert cfg["space"]["tau"] == {"low": 2.0, "high": 30, "log": True}
    assert cfg["space"]["optim.momentum"] == {"low": 0.8, "high": 0.95}
    assert cfg["results_dir"] == str(tmp_path / "r")
    assert not (tmp_path / "r").exists()  # printed, nothing run or written
    # and a bad value there is caught like any other, naming its path
    assert main(["search", str(SMOKE), "--set", "space.tau.low=0", "--print-config"]) == 2
    assert capsys.readouterr().err.startswith("error: space.tau.low:")


@pytest.mark.parametrize("overrides,field,says", [
    (["prune.optim.lr=1e9"], "space.lr", "also fixed by prune.optim.lr"),          # fixed and searched
    # the space's first key that writes the ladder (a peer's method sets a one-member ladder too)
    (["prune.cascade.ratios=[0.5,0.0]"], "space.method", "also fixed by prune.cascade.ratios"),
    (["space={num_tas: {low: 0, high: 2}}", "prune.cascade.ratios=[0.5,0.0]"], "space.num_tas",
     "also fixed by prune.cascade.ratios"),
    (["space.tua.high=3"], "space.tua", "unknown parameter"),                       # not "low is missing"
    (["space.optim.wd={low: 0.1, high: 0.2}"], "space.optim.wd", "unknown parameter"),
])
def test_one_value_one_place_and_unknown_parameters_are_named(overrides, field, says, tmp_path, capsys,
                                                              ray_forbidden):
    sets = [a for o in overrides for a in ("--set", o)]
    assert main(["search", str(SMOKE), "--set", f"results_dir={tmp_path / 'r'}", *sets]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}:") and says in err[0], err
    assert not (tmp_path / "r").exists()


def test_relative_paths_inside_a_ray_job_working_dir_are_refused(tmp_path):
    from cascade.config import ConfigError
    from search.config import resolve_paths

    job_dir = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_abc"
    with pytest.raises(ConfigError) as e:
        resolve_paths(load_config(SMOKE), cwd=job_dir)
    assert e.value.field == "results_dir" and "$PWD/results" in e.value.message
    cfg = resolve_paths(load_config(SMOKE, [f"results_dir={tmp_path}/r", "storage=s3://bucket/x"]), cwd=job_dir)
    assert cfg.results_dir == f"{tmp_path}/r" and cfg.tune_path == "s3://bucket/x/smoke/tune"
