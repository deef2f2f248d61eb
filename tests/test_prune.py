import json
import math
import subprocess
import sys

import pytest
import torch

from cascade import create_model, load_prune_config, prune_epochs, run_prune
from cascade.cli import main
from cascade.engine import CheckpointError, evaluate, lr_factor, resolve_device
from cascade.train import load_prune_data
from conftest import TINY


@pytest.mark.slow
def test_prune_on_digits_removes_filters_cuts_flops_and_learns(tmp_path):
    cfg = load_prune_config(None, TINY + ["cascade.ratios=[0.6,0.3,0.0]", "cascade.budget=filters"])
    r = run_prune(cfg, tmp_path, log=lambda s: None)
    student = r["members"][0]
    assert student["kept_fraction"] == pytest.approx(0.4, abs=0.01)
    assert [m["ratio"] for m in r["members"]] == [0.6, 0.3, 0.0]
    assert r["members"][2]["kept_fraction"] == 1.0
    assert 0.35 < r["flops_reduction"] < 0.95 and r["params_reduction"] > 0.3
    assert r["accuracy"] > 50  # chance is 10%
    assert len(r["history"]) == 4 and r["history"][-1]["phase"] == "finetune"
    # each phase one cosine cycle to 0 (the lr logged is the next step's): half the peak after one of two epochs
    peak = cfg.optim.lr
    assert [h["lr"] / peak for h in r["history"]] == pytest.approx([0.5, 0, 0.5, 0], abs=1e-9)
    saved = json.loads((tmp_path / "result.json").read_text())
    for key in ("accuracy", "flops", "params", "base_flops", "base_params", "teacher_accuracy", "members",
                "kept_channels", "config", "seed"):
        assert key in saved
    # the exported module on disk is the one that was measured
    model = torch.load(tmp_path / "student.pt", weights_only=False)
    assert sum(m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)) < 0.6 * 520
    # the stem is pruned too (cascade.prune_stem, the default): the saved decisions name it, the module has them
    stem, full = (next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
                  for net in (model, create_model(cfg.model.name, num_classes=10, width=cfg.model.width)))
    assert stem.out_channels == len(saved["decisions"]["features.0"]) < full.out_channels
    data = load_prune_data(cfg)
    assert evaluate(model, data.test, resolve_device("cpu")) == pytest.approx(r["accuracy"], abs=1e-6)


def score_group(run_dir) -> dict:
    """The scores' optimizer settings in a run's checkpoint (lr: the next step's)."""
    return torch.load(run_dir / "checkpoint.pt", weights_only=False)["saved"]["opt_s"]["param_groups"][0]


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    cfg = load_prune_config(None, TINY + ["schedule.joint_epochs=3", "cascade.ratios=[0.5,0.0]",
                                          "optim.score_schedule=cosine", "optim.lr_schedule=run"])
    gen = prune_epochs(cfg, tmp_path, log=lambda s: None)
    first = [next(gen)]
    after_one = score_group(tmp_path)
    first.append(next(gen))  # two joint epochs done and checkpointed, then the run "dies"
    gen.close()
    lines = []
    gen = prune_epochs(cfg, tmp_path, log=lines.append)
    next(gen)  # the third joint epoch, resumed: its checkpoint holds the scores' last lr
    end_of_joint = score_group(tmp_path)
    gen.close()
    r = run_prune(cfg, tmp_path, log=lines.append)
    assert any("resuming" in line and "2 epochs done" in line for line in lines)
    assert [(m["phase"], m["epoch"]) for m in r["history"]] == [
        ("joint", 1), ("joint", 2), ("joint", 3), ("finetune", 1), ("finetune", 2)]
    assert r["history"][0]["loss"] == first[0]["loss"]
    # the scores' lr follows its cosine across the kill: 3/4 of the peak after 1 of 3 epochs, 0 at the end
    peak = after_one["initial_lr"]
    assert after_one["lr"] == pytest.approx(0.75 * peak) and end_of_joint["lr"] == pytest.approx(0, abs=1e-12)
    # lr_schedule run: one cosine over the 3 + 2 epochs, the fine-tuning continuing it (not restarting) after a kill
    cosine = [0.5 * (1 + math.cos(math.pi * e / 5)) for e in range(1, 6)]
    assert [h["lr"] / cfg.optim.lr for h in r["history"]] == pytest.approx(cosine, abs=1e-9)
    # the default budget is FLOPs: the student removes at most, and about, half of them
    assert r["members"][0]["budget"] == "flops" and r["members"][0]["requested_flops"] == 0.5 * r["base_flops"]
    assert 0.45 * r["base_flops"] <= r["flops"] <= 0.5 * r["base_flops"]


def test_checkpoint_of_another_version_is_reported_not_misread(tmp_path):
    torch.save({"phase": "joint", "joint_member_acc": [0.5]}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"another version of cascade \(keys \['joint_member_acc'\]\)"):
        run_prune(load_prune_config(None, TINY), tmp_path, log=lambda s: None)


def test_checkpoint_of_another_config_is_refused_not_resumed(tmp_path):
    gen = prune_epochs(load_prune_config(None, TINY), tmp_path, log=lambda s: None)
    next(gen)  # one joint epoch checkpointed, then the run is restarted with another lr
    gen.close()
    with pytest.raises(CheckpointError, match=r"another config \(it differs in optim.lr\)"):
        run_prune(load_prune_config(None, TINY + ["optim.lr=0.123"]), tmp_path, log=lambda s: None)
    gen = prune_epochs(load_prune_config(None, TINY + ["device=cpu"]), tmp_path, log=lambda s: None)
    assert next(gen)["epoch"] == 2  # how it runs may change: it resumes
    gen.close()


def test_corrupt_checkpoint_is_reported_not_restarted(tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"PK\x03\x04 truncated")
    cfg = load_prune_config(None, TINY)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        run_prune(cfg, tmp_path, log=lambda s: None)
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"PK\x03\x04 truncated"


BAD = [
    (["--set", "cascade.ratios=[0.3,0.5]"], "cascade.ratios[1]"),
    (["--set", "cascade.ratios=[1.2]"], "cascade.ratios[0]"),
    (["--set", "cascade.ratio=[0.5]"], "cascade.ratio"),
    (["--set", "model.name=resnet9000"], "model.name"),
    (["--set", "model.width=wide"], "model.width"),
    (["--set", "data.batch_size=0"], "data.batch_size"),
    (["--set", "data.name=imagefolder", "--set", "data.root=/nonexistent/x"], "data.root"),
    (["--set", "schedule.joint_epochs=0"], "schedule.joint_epochs"),
    (["--set", "teacher.checkpoint=/nonexistent.pt"], "teacher.checkpoint"),
    (["--set", "optim.score_optimizer=lion"], "optim.score_optimizer"),
    (["--set", "optim.score_schedule=linear"], "optim.score_schedule"),
    (["--set", "optim.lr_schedule=cosine"], "optim.lr_schedule"),
]


@pytest.mark.parametrize("args,field", BAD)
def test_bad_prune_config_exits_2_naming_the_field(args, field, tmp_path, capsys):
    assert main(["prune", *args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {field}:")
    assert not (tmp_path / "out").exists()  # nothing written


def test_wrong_class_count_teacher_fails_before_training(tmp_path, capsys):
    from cascade import create_model

    torch.save(create_model("vgg16_cifar", num_classes=100, width=0.25), tmp_path / "t.pt")
    assert main(["prune", "--set", "model.width=0.25", "--set", f"teacher.checkpoint={tmp_path / 't.pt'}",
                 "--out", str(tmp_path / "out")]) == 2
    assert "teacher.checkpoint: the teacher predicts 100 classes" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    p = subprocess.run([sys.executable, "-m", "cascade_cli", "prune", "--set", "loss.tau=-1", "--out", str(tmp_path)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.strip() == "error: loss.tau: expected > 0, got -1"


def test_lr_schedule_restarts_with_decay():
    assert lr_factor(0, 10, 5, 0.5, 10) == pytest.approx(1.0)
    assert lr_factor(25, 10, 5, 0.5, 10) == pytest.approx(0.5)     # middle of the first cycle
    assert lr_factor(50, 10, 5, 0.5, 10) == pytest.approx(0.5)     # restart, peak halved
    assert lr_factor(49, 10, 5, 0.5, 10) < 0.01


def test_lr_schedule_fits_its_cycles_to_the_phase():
    """Whatever the phase's length, its lr reaches 0 at the last step: a phase shorter than a cycle is one
    cycle, a longer one holds whole cycles of about ``restart_epochs``."""
    last = lambda epochs, restart: lr_factor(epochs * 10 - 1, 10, restart, 0.8, epochs)  # noqa: E731
    assert [last(e, 5) < 0.01 for e in (2, 4, 8, 12, 80)] == [True] * 5
    assert lr_factor(40, 10, 5, 0.8, 8) == pytest.approx(0.5)    # 8 epochs: one cycle, halfway at epoch 4
    assert lr_factor(60, 10, 5, 0.8, 12) == pytest.approx(0.8)   # 12 epochs: two cycles of 6, the second's peak
    assert lr_factor(775, 10, 5, 0.8, 80) == pytest.approx(0.8 ** 15 * 0.5)  # 80 epochs: 16 cycles of 5
    assert lr_factor(40, 10, 5, 0.8, 4) == 0.0                   # past the phase's end


def test_teacher_training_is_reproducible(tmp_path):
    """The same config trains the same teacher whatever the process did before (torch's startup seed is random)."""
    from cascade.teacher import get_teacher

    weights = []
    for i in range(2):
        cfg = load_prune_config(None, TINY + ["teacher.epochs=1", f"cache_dir={tmp_path / str(i)}"])
        torch.manual_seed(1000 + i)  # whatever state the caller left behind
        model, _ = get_teacher(cfg, load_prune_data(cfg), torch.device("cpu"), log=lambda s: None)
        weights.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
