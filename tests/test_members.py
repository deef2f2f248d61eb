import pytest
import torch

from cascade import CascadeNet, count_flops, create_model
from cascade.masks import keep_count, route_to_teacher
from reference_budget import global_topk
from cascade.losses import cascade_loss
from conftest import train_steps

MODELS = ["vgg16_cifar", "resnet56_cifar", "torchvision:resnet18"]


def _trained_net(name, ratios, steps=3, seed=0):
    """A CascadeNet whose scores, weights and BN statistics have moved through real training steps."""
    torch.manual_seed(seed)
    net = CascadeNet(create_model(name, num_classes=10, width=0.25), ratios, torch.zeros(2, 3, 32, 32),
                     budget="filters")
    return train_steps(net, steps)


@pytest.mark.parametrize("name", MODELS)
def test_exported_member_equals_masked_member(name):
    net = _trained_net(name, [0.7, 0.4, 0.0]).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        masked = net(x)
    full_flops, _ = count_flops(net.plain_member(2), (3, 32, 32))
    for i in range(net.n):
        exported = net.export(i).eval()
        assert not any(type(m).__name__.startswith("Member") for m in exported.modules())
        with torch.no_grad():
            assert (exported(x) - masked[i]).abs().max().item() < 1e-4
        flops, _ = count_flops(exported, (3, 32, 32))
        if net.ratios[i] > 0:
            assert flops < full_flops  # physically smaller
        # exactly the decided channels survive, group by group
        for root, kept in net.decisions(i).items():
            assert exported.get_submodule(root).out_channels == len(kept)


@pytest.mark.parametrize("name", MODELS)
def test_global_threshold_keeps_exactly_the_requested_filters(name):
    net = _trained_net(name, [0.8, 0.5, 0.2, 0.0], steps=1)
    for i, m in enumerate(net.hard_masks()):
        assert int(m.sum()) == net.total_filters - round(net.ratios[i] * net.total_filters)
        assert all(g[i].sum() >= 1 for g in net.group_masks(net.hard_masks()))  # no layer is emptied


def test_global_threshold_is_global_not_per_layer():
    scores = [torch.tensor([0.9, 0.8, 0.7, 0.6]), torch.tensor([0.1, 0.2, 0.05, 0.3])]
    m = global_topk(scores, keep=5)
    assert m[0].tolist() == [1, 1, 1, 1] and m[1].tolist() == [0, 0, 0, 1]
    assert keep_count(0.5, 10) == 5 and keep_count(0.99, 10, min_keep=2) == 2


def test_rank_init_starts_as_uniform_l1_pruning():
    """The default score_init: each layer keeps about the same fraction, its largest-L1 filters."""
    torch.manual_seed(0)
    model = create_model("vgg16_cifar", width=0.5)
    net = CascadeNet(model, [0.5], torch.zeros(1, 3, 32, 32), budget="filters")
    for g, m in zip(net.groups, net.group_masks(net.hard_masks())):
        assert abs(int(m[0].sum()) - g.size / 2) <= 1, (g.root, int(m[0].sum()), g.size)
        l1 = model.get_submodule(g.root).weight.abs().flatten(1).sum(1)
        assert set(torch.nonzero(m[0]).flatten().tolist()) == set(l1.topk(int(m[0].sum())).indices.tolist())
    # the l1 init, by contrast, prunes layers very unevenly
    l1_net = CascadeNet(model, [0.5], torch.zeros(1, 3, 32, 32), budget="filters", score_init="l1")
    fractions = [float(m[0].float().mean()) for m in l1_net.group_masks(l1_net.hard_masks())]
    assert max(fractions) - min(fractions) > 0.5, fractions


def test_score_gradient_comes_from_the_teacher_member():
    net = _trained_net("vgg16_cifar", [0.7, 0.4, 0.0], steps=1)
    x, y, t = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), torch.randn(8, 10)

    def grads(route):
        net.route_scores = route
        net.zero_grad()
        logits = net(x)
        cascade_loss(logits, y, t, tau=4.0, lambda_kd=0.5, lambda_h=0.0)["loss"].backward()
        return net.scores.grad.clone()

    o, r = grads(False), grads(True)
    assert torch.equal(r[0], o[1]) and torch.equal(r[1], o[2])  # member i gets member i+1's gradient
    assert torch.equal(r[2], o[2])                                # the top member keeps its own
    assert not torch.equal(o[0], o[1])                            # the routing is not a no-op
    g = torch.arange(6.0).view(3, 2)
    assert route_to_teacher(g).tolist() == [[2, 3], [4, 5], [4, 5]]


def test_masked_filters_still_receive_gradient():
    net = _trained_net("vgg16_cifar", [0.7, 0.0], steps=0)
    net.route_scores = False
    logits = net(torch.randn(8, 3, 32, 32))
    logits[0].pow(2).sum().backward()
    pruned_grads = net.scores.grad[0][net.hard_masks()[0] == 0]
    assert pruned_grads.abs().sum() > 0  # straight-through: a pruned filter can come back


def test_members_run_as_one_batch_through_shared_convs():
    net = _trained_net("vgg16_cifar", [0.5, 0.0], steps=0)
    seen = []
    conv = net.body.features[3]  # a shared conv
    h = conv.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0]))
    net(torch.randn(4, 3, 32, 32))
    h.remove()
    assert seen == [8]  # one call over N*B images


def test_bad_ratios_are_rejected():
    m = create_model("vgg16_cifar", width=0.25)
    for ratios, msg in [([0.5, 0.6], "decrease"), ([1.0], r"\[0, 1\)"), ([], "at least one")]:
        with pytest.raises(ValueError, match=msg):
            CascadeNet(m, ratios, torch.zeros(1, 3, 32, 32))
