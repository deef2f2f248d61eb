"""bench/quality.py: a row run in its own process (``--jobs``) rebuilds the parent's configuration, the
Taylor peer prunes with the gradient it computed once, and a peer on the cascade's schedule restarts it."""
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from cascade import PruneConfig, count_flops, create_model
from cascade.data import load_data


def _quality():
    spec = importlib.util.spec_from_file_location("quality", Path(__file__).parents[1] / "bench" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("argv", [
    [],
    ["--mode", "gpu", "--epochs", "3", "3", "--teacher-epochs", "20", "--jobs", "8", "--seeds", "0", "1", "2"],
    ["--width", "0.125", "--train-subset", "19000", "--teacher", "TEACHER", "--set", "data.val_fraction=0.526316",
     "--set", "loss.lambda_h=0", "--device", "cpu", "--workdir", "w", "--targets", "0.83", "0.73"],
])
def test_a_row_process_rebuilds_the_parents_configuration(argv, tmp_path):
    q = _quality()
    (tmp_path / "t.pt").touch()
    argv = [str(tmp_path / "t.pt") if a == "TEACHER" else a for a in argv]
    parent = q.parser().parse_args(["--data", str(tmp_path), *argv])
    argv_child = q.child_argv(parent, "cascade_1ta:no_hints", 0.83, 2, tmp_path / "row.json")
    assert argv_child[:2] == [sys.executable, q.__file__]
    child = q.parser().parse_args(argv_child[2:])
    assert q.configure(child) == q.configure(parent)  # the same prune config, settings, so run directory
    assert (child.methods, child.targets, child.seeds, child.jobs) == (["cascade_1ta:no_hints"], [0.83], [2], 1)
    assert (child.out, child.workdir, child.device) == (str(tmp_path / "row.json"), parent.workdir, parent.device)


def test_the_taylor_peer_fits_the_budget_and_differs_from_group_norm():
    q = _quality()
    torch.manual_seed(0)
    data = load_data(name="digits", train_subset=600)
    teacher = create_model("vgg16_cifar", num_classes=10, width=0.125).eval()
    base = count_flops(teacher, data.input_size)[0]
    cfg = PruneConfig()
    cfg.data.batch_size = 32
    widths = {}
    for importance in ("taylor", "norm"):
        student = q.tp_global(teacher, 0.27 * base, data, cfg, importance)
        assert count_flops(student, data.input_size)[0] <= 0.27 * base
        assert all(p.grad is None for p in student.parameters())
        widths[importance] = [m.out_channels for m in student.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths["taylor"] != widths["norm"]  # the gradient reached the importance
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is left as it was


def test_a_peer_on_the_cascades_schedule_restarts_at_fine_tuning(tmp_path, capsys):
    q = _quality()
    assert q.method_arg("l1_kd:phases") == "l1_kd:phases"
    with pytest.raises(Exception, match="unknown method"):
        q.method_arg("l1_kd:no_hints")  # the cascade's ablations are not the peers'
    data = load_data(name="digits", train_subset=300)
    teacher = create_model("vgg16_cifar", num_classes=10, width=0.125).eval()
    base = count_flops(teacher, data.input_size)[0]
    cfg = PruneConfig()
    cfg.data.batch_size, cfg.schedule.joint_epochs, cfg.schedule.finetune_epochs = 64, 1, 2
    epochs = {}
    for method in ("l1_kd", "l1_kd:phases"):
        row = q.run_row(method, 0.5, 0, cfg, data, (teacher, 10.0), base, tmp_path, torch.device("cpu"))
        assert row["method"] == method and row["flops_reduction"] >= 0.5
        epochs[method] = [line.split()[2] for line in capsys.readouterr().out.splitlines() if "distill epoch" in line]
    assert epochs == {"l1_kd": ["1/3", "2/3", "3/3"], "l1_kd:phases": ["1/1", "1/2", "2/2"]}
