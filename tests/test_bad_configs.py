"""A corpus of malformed configs (tests/bad_configs): each fails before any work with exit code 2 and one
line naming the field (its first line says which: ``# expect: <field>``), and writes nothing."""
from pathlib import Path

import pytest
import torch

from cascade_cli import main

CORPUS = Path(__file__).resolve().parent / "bad_configs"


def _expect(path: Path) -> str:
    return path.read_text().splitlines()[0].removeprefix("# expect: ").strip()


def _run(argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize("path", sorted((CORPUS / "prune").glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_prune_config(path, tmp_path, capsys):
    code, err = _run(["prune", str(path), "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {_expect(path)}:"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("path", sorted((CORPUS / "search").glob("*.yaml")), ids=lambda p: p.stem)
def test_bad_search_config(path, tmp_path, capsys, ray_forbidden):
    code, err = _run(["search", str(path), "--set", f"results_dir={tmp_path / 'results'}"], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith(f"error: {_expect(path)}:"), err
    assert not (tmp_path / "results").exists()


def test_unreadable_teacher_checkpoint(tmp_path, capsys):
    bad = tmp_path / "teacher.pt"
    bad.write_text("not a checkpoint")
    code, err = _run(["prune", "--set", f"teacher.checkpoint={bad}", "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and err[0].startswith("error: teacher.checkpoint: cannot read")
    assert not (tmp_path / "out").exists()


def test_teacher_for_another_data_set_in_a_search(tmp_path, capsys, local_ray):
    from cascade import create_model

    torch.save(create_model("vgg16_cifar", num_classes=100, width=0.25), tmp_path / "t100.pt")
    code, err = _run(["search", str(CORPUS.parents[1] / "configs" / "smoke.yaml"), "--set",
                      f"prune.teacher.checkpoint={tmp_path / 't100.pt'}", "--set", f"results_dir={tmp_path / 'r'}"],
                     capsys)
    assert code == 2 and err[0].startswith("error: prune.teacher.checkpoint: the teacher predicts 100 classes")
    assert not (tmp_path / "r").exists()


def test_corpus_is_large_enough():
    assert len(list(CORPUS.rglob("*.yaml"))) >= 25
