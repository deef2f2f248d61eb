import pytest
import torch

from cascade import CascadeNet, count_flops, create_model
from conftest import train_steps

RATIOS = [0.85, 0.6, 0.3]  # FLOPs removed by the student and two TAs


def _trained(name, budget, steps=2):
    torch.manual_seed(0)
    net = CascadeNet(create_model(name, num_classes=10), RATIOS, torch.zeros(1, 3, 32, 32), budget=budget)
    before = [s.detach().clone() for s in net.scores]
    train_steps(net, steps, batch=4, lr=0.01, score_lr=0.05)
    assert any(not torch.equal(a, b) for a, b in zip(before, net.scores))  # the scores did move
    return net


@pytest.mark.parametrize("name", ["vgg16_cifar", "resnet56_cifar", "torchvision:resnet18"])
def test_flops_budget_is_met_within_one_percent_and_counted_exactly(name):
    net = _trained(name, "flops")
    base_flops, _ = count_flops(create_model(name, num_classes=10), (3, 32, 32))
    assert net.base_cost[0] == base_flops
    masks = net.hard_masks()
    for i, k in enumerate(RATIOS):
        exported = net.export(i)
        flops, params = count_flops(exported, (3, 32, 32))
        assert (flops, params) == net.member_cost(i, masks)  # the masked member's cost is the exported one's
        target = (1 - k) * base_flops
        assert 0.99 * target <= flops <= target, (i, flops / target)


def test_params_budget():
    net = _trained("vgg16_cifar", "params", steps=1)
    _, base_params = count_flops(create_model("vgg16_cifar"), (3, 32, 32))
    for i, k in enumerate(RATIOS):
        _, params = count_flops(net.export(i), (3, 32, 32))
        assert 0.99 * (1 - k) * base_params <= params <= (1 - k) * base_params


def test_filters_budget_is_unchanged():
    net = _trained("resnet56_cifar", "filters", steps=1)
    for i, m in enumerate(zip(*net.hard_masks())):
        assert sum(int(g.sum()) for g in m) == net.total_filters - round(RATIOS[i] * net.total_filters)


def test_unknown_budget():
    with pytest.raises(ValueError, match="budget"):
        CascadeNet(create_model("vgg16_cifar", width=0.25), [0.5], torch.zeros(1, 3, 32, 32), budget="latency")


def test_round_to_keeps_multiples_within_the_flops_budget():
    torch.manual_seed(0)
    net = CascadeNet(create_model("vgg16_cifar"), RATIOS, torch.zeros(1, 3, 32, 32), round_to=8)
    train_steps(net, 1, batch=4, lr=0.01, score_lr=0.05)
    base_flops = net.base_cost[0]
    for i, k in enumerate(RATIOS):
        exported = net.export(i)
        widths = [m.out_channels for m in exported.modules() if isinstance(m, torch.nn.Conv2d)][1:]  # not the stem
        assert all(w % 8 == 0 for w in widths), widths
        flops, _ = count_flops(exported, (3, 32, 32))
        assert 0.9 * (1 - k) * base_flops <= flops <= (1 - k) * base_flops, (i, flops / ((1 - k) * base_flops))
