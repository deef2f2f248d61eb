"""The teacher in shared storage: cached under a URI (pyarrow's filesystems; file:// here, s3:// on a cluster)
with its accuracy, reused without training or evaluating again, and loaded back from a URI checkpoint."""
import json

import pytest
import torch

from cascade.config import load_prune_config
from cascade.teacher import get_teacher, teacher_location
from cascade.train import load_prune_data

TINY = ["model.width=0.25", "teacher.epochs=1", "data.batch_size=64"]


def test_teacher_cached_at_a_uri_is_reused_and_loads_from_a_uri_checkpoint(tmp_path, monkeypatch):
    cfg = load_prune_config(None, TINY)
    data = load_prune_data(cfg)
    store = f"file://{tmp_path}/store/teachers"
    model, acc = get_teacher(cfg, data, torch.device("cpu"), log=lambda s: None, cache=store)
    where = teacher_location(cfg, store)
    local = tmp_path / "store" / "teachers" / where.rsplit("/", 1)[-1]
    assert (local / "teacher.pt").is_file()
    assert json.loads((local / "config.json").read_text())["test_accuracy"] == pytest.approx(acc)

    def fail(*a, **k):
        raise AssertionError("trained or evaluated again")

    monkeypatch.setattr("cascade.teacher.train_teacher", fail)
    monkeypatch.setattr("cascade.teacher.evaluate", fail)
    logs = []
    again, acc2 = get_teacher(cfg, data, torch.device("cpu"), log=logs.append, cache=store)
    assert acc2 == acc and logs == [f"teacher: reusing {where}/teacher.pt"]
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))

    monkeypatch.undo()  # a checkpoint (not the cache) is evaluated once
    ckpt = load_prune_config(None, TINY + [f"teacher.checkpoint=file://{local / 'teacher.pt'}"])
    loaded, acc3 = get_teacher(ckpt, data, torch.device("cpu"), log=lambda s: None)
    assert acc3 == pytest.approx(acc)
