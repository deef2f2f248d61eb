"""The one-shot peers (``method: l1 | group_norm | taylor``) and the fixes that make them and the cascade's
fine-tuning fair: exact budgets, independent data order per phase, the Taylor importance's KD term, the hint
target's sign, and the teacher ladder ordered by accuracy."""
import json

import pytest
import torch

from cascade import CascadeNet, count_flops, create_model, load_prune_config, run_prune
from cascade.engine import resolve_device
from cascade.peers import PEERS, peer_scores, prunable_copy, taylor_gradients
from cascade.train import first_teacher, load_prune_data, taps, teacher_order
from conftest import TINY


@pytest.fixture(scope="module")
def digits():
    cfg = load_prune_config(None, TINY)
    return cfg, load_prune_data(cfg)


@pytest.mark.parametrize("method", PEERS)
def test_each_peer_prunes_to_the_exact_flops_target(method, digits):
    cfg, data = digits
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", num_classes=10, width=0.25)
    net = CascadeNet(model, [0.73], torch.zeros(1, 3, 32, 32))
    copy = prunable_copy(model)
    if method == "taylor":
        taylor_gradients(copy, model, data, resolve_device("cpu"), tau=4.0, lambda_kd=0.5, batch_size=32, seed=0)
    with torch.no_grad():
        net.scores.copy_(peer_scores(method, net, copy)[None])
    flops, _ = count_flops(net.export(0), (3, 32, 32))
    granularity = int(net.cost_model.granularity(net.sizes, "flops").max())
    assert net.targets[0] - granularity < flops <= net.targets[0]
    kept = [int(m[0].sum()) / g.size for g, m in zip(net.groups, net.group_masks(net.step_masks()))]
    if method == "l1":  # uniform: every layer keeps the same fraction, to a filter
        assert all(abs(k - kept[0]) <= 1.5 / g.size + 1e-9 for k, g in zip(kept, net.groups)), kept
    else:  # global: no layer loses more than 90%
        assert min(kept) >= 0.09, kept


def test_the_taylor_importance_includes_the_kd_term(digits):
    """Its gradient is the training loss's (CE + KD from the frozen teacher) with the student in train mode: the
    KL term is not zero (distilling from itself in eval mode, it was)."""
    cfg, data = digits
    torch.manual_seed(0)
    teacher = create_model("vgg16_cifar", num_classes=10, width=0.25).eval()
    terms = taylor_gradients(prunable_copy(teacher), teacher, data, resolve_device("cpu"), tau=4.0, lambda_kd=0.5,
                             batch_size=32, seed=0)
    assert terms["kd"] > 1e-4 and terms["loss"] > terms["ce"]


def test_a_tap_keeps_the_batchnorm_output_an_inplace_relu_would_overwrite():
    """VGG's BatchNorm is followed by ReLU(inplace=True): the tapped teacher feature is the BN output itself
    (negatives included), as the members' is, not its rectified version."""
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", num_classes=10, width=0.25).eval()
    x = torch.randn(4, 3, 32, 32)
    bn = model.features[41]
    seen = []
    h = bn.register_forward_hook(lambda m, i, o: seen.append(o.clone()))
    with taps(model, ["features.41"]) as store, torch.no_grad():
        model(x)
    h.remove()
    assert (store["features.41"] < 0).any()
    assert torch.equal(store["features.41"], seen[0])
    # the unpruned member at init computes the teacher's map: its hint target matches its own feature
    net = CascadeNet(model, [0.5, 0.0], torch.zeros(1, 3, 32, 32)).eval()
    with torch.no_grad():
        _, feats = net(x, with_features=True)
    assert (feats[1][-1] - store["features.41"]).abs().max() < 1e-4


def test_the_ladder_is_ordered_by_accuracy_and_starts_above_the_student():
    accs = [61.0, 70.5, 69.2]  # TA m1, TA m2 (ratio 0, trained past the teacher), the pretrained model
    order = teacher_order(accs)
    assert order == [0, 2, 1]  # the pretrained teacher sits below the better TA
    assert order[first_teacher(accs, order, 65.0)] == 2
    assert order[first_teacher(accs, order, 50.0)] == 0
    assert order[first_teacher(accs, order, 80.0)] == 1  # none above: the best one


@pytest.mark.slow
def test_a_peer_runs_from_the_config_with_independent_data_per_phase(tmp_path, monkeypatch):
    """``method: l1`` through run_prune: the same result.json as a cascade, its two phases (the joint and the
    fine-tune lengths) drawing different batch orders (a peer's second phase once replayed the first's)."""
    from cascade.data import TensorSplit

    firsts = []
    batches = TensorSplit.batches

    def record(self, *a, **kw):
        it = batches(self, *a, **kw)
        if kw.get("train"):
            x, y = next(it)
            firsts.append(y.clone())
            yield x, y
        yield from it

    monkeypatch.setattr(TensorSplit, "batches", record)
    cfg = load_prune_config(None, TINY + ["method=l1", "schedule.joint_epochs=1", "schedule.finetune_epochs=1",
                                          "cascade.ratios=[0.6,0.0]"])
    r = run_prune(cfg, tmp_path, log=lambda s: None)
    assert [h["phase"] for h in r["history"]] == ["distill", "finetune"]
    assert len(firsts) >= 2 and not torch.equal(firsts[-2], firsts[-1])
    saved = json.loads((tmp_path / "result.json").read_text())
    assert saved["config"]["method"] == "l1" and len(saved["members"]) == 1
    assert 0.59 < saved["flops_reduction"] <= 0.61
    assert all(h["teacher"] == "pretrained" for h in r["history"])


@pytest.mark.slow
def test_the_cascade_fine_tunes_from_teachers_in_accuracy_order(tmp_path):
    cfg = load_prune_config(None, TINY + ["cascade.ratios=[0.7,0.4,0.0]", "schedule.finetune_epochs=3"])
    r = run_prune(cfg, tmp_path, log=lambda s: None)
    fine = [h for h in r["history"] if h["phase"] == "finetune"]
    accs = [h["teacher_val_acc"] for h in fine]
    assert accs == sorted(accs)  # swaps only move up in accuracy
    start = r["members"][0]["val_acc"]
    candidates = [m["val_acc"] for m in r["members"][1:]]
    assert accs[0] > start or accs[0] >= max(candidates)
