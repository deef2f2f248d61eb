"""Budgets: exact costs, masks filled as tightly as the channels allow (integer bounds, the same on every CPU),
and per-step device masks equal to the host-side bisection they replaced."""
import pytest
import torch
import torch.nn as nn

from cascade import CascadeNet, count_flops, create_model
from conftest import train_steps
from reference_budget import bisect_masks, global_topk

RATIOS = [0.85, 0.6, 0.3]  # FLOPs removed by the student and two TAs


def _trained(name, budget, steps=2, width=1.0, round_to=1, score_lr=0.05):
    torch.manual_seed(0)
    net = CascadeNet(create_model(name, num_classes=10, width=width), RATIOS, torch.zeros(1, 3, 32, 32),
                     budget=budget, round_to=round_to)
    before = net.scores.detach().clone()
    train_steps(net, steps, batch=4, lr=0.01, score_lr=score_lr)
    assert steps == 0 or not torch.equal(before, net.scores)  # the scores did move
    return net


def _check_filled(net, kind):
    """Every member: cost <= target, and the slack is below the cheapest filter it could still add (each
    filter's full-width cost bounds its cost at any mask), so no filter that fits was left out."""
    idx = 0 if kind == "flops" else 1
    granularity = net.cost_model.granularity(net.sizes, kind)[net.group_of]  # (F,) each filter's largest cost
    masks = net.final_masks()
    for i, target in enumerate(net.targets):
        cost = net.member_cost(i)[idx]
        unkept = masks[i] == 0
        assert cost <= target, (i, cost, target)
        if unkept.any():
            assert target - cost < int(granularity[unkept].min()), (i, target - cost)
        stats = net.member_stats()[i]
        assert stats["budget_used"] == pytest.approx(cost / target)
    return granularity


@pytest.mark.parametrize("name", ["vgg16_cifar", "resnet56_cifar", "torchvision:resnet18"])
def test_flops_budget_is_filled_to_the_granularity_and_counted_exactly(name):
    net = _trained(name, "flops")
    base_flops, _ = count_flops(create_model(name, num_classes=10), (3, 32, 32))
    assert net.base_cost[0] == base_flops
    granularity = _check_filled(net, "flops")
    for i, k in enumerate(RATIOS):
        flops, params = count_flops(net.export(i), (3, 32, 32))
        assert (flops, params) == net.member_cost(i)  # the masked member's cost is the exported one's
        target = (1 - k) * base_flops
        if int(granularity.max()) <= 0.01 * target:  # where one filter is under 1% of the budget: within 1%
            assert flops >= 0.99 * target, (i, flops / target)


def test_params_budget():
    net = _trained("vgg16_cifar", "params", steps=1)
    _check_filled(net, "params")
    _, base_params = count_flops(create_model("vgg16_cifar"), (3, 32, 32))
    for i, k in enumerate(RATIOS):
        _, params = count_flops(net.export(i), (3, 32, 32))
        assert 0.99 * (1 - k) * base_params <= params <= (1 - k) * base_params


def test_filters_budget_keeps_exact_counts():
    net = _trained("resnet56_cifar", "filters", steps=1)
    for i, m in enumerate(net.final_masks()):
        assert int(m.sum()) == net.total_filters - round(RATIOS[i] * net.total_filters)


def test_unknown_budget():
    with pytest.raises(ValueError, match="budget"):
        CascadeNet(create_model("vgg16_cifar", width=0.25), [0.5], torch.zeros(1, 3, 32, 32), budget="latency")


def test_round_to_keeps_multiples_within_the_flops_budget():
    net = _trained("vgg16_cifar", "flops", steps=1, round_to=8)
    base_flops = net.base_cost[0]
    for i, k in enumerate(RATIOS):
        exported = net.export(i)
        widths = [m.out_channels for m in exported.modules() if isinstance(m, torch.nn.Conv2d)]  # the stem's too
        assert all(w % 8 == 0 for w in widths), widths
        flops, _ = count_flops(exported, (3, 32, 32))
        assert 0.97 * (1 - k) * base_flops <= flops <= (1 - k) * base_flops, (i, flops / ((1 - k) * base_flops))


def _host_masks(net):
    """The replaced host algorithm, member by member, on the net's groups."""
    out = []
    for i in range(net.n):
        scores = list(net.scores[i].detach().split(net.sizes.tolist()))
        if net.budget == "filters":
            masks = global_topk(scores, net.keep[i], net.round_to)
        else:
            masks = bisect_masks(scores, net.cost_model, net.targets[i], net.budget, net.round_to)
        out.append(torch.cat(masks))
    return torch.stack(out)


@pytest.mark.parametrize("name", ["vgg16_cifar", "resnet56_cifar", "torchvision:resnet18", "torchvision:mobilenet_v2"])
@pytest.mark.parametrize("budget", ["flops", "params", "filters"])
@pytest.mark.parametrize("round_to", [1, 8])
def test_device_masks_equal_the_host_bisection(name, budget, round_to):
    torch.manual_seed(0)
    net = CascadeNet(create_model(name, num_classes=10, width=0.5), RATIOS, torch.zeros(1, 3, 32, 32),
                     budget=budget, round_to=round_to)
    for trained in (False, True):  # the rank init (many ties across layers), then random and trained scores
        if trained:
            with torch.no_grad():
                net.scores.copy_(torch.rand_like(net.scores))
            train_steps(net, 1, batch=4, lr=0.01, score_lr=0.05)
        assert torch.equal(net.step_masks(), _host_masks(net)), trained


def test_training_step_has_no_host_synchronisation():
    """No .item()/.tolist()/.cpu()/bool(tensor) inside forward, loss, backward and optimizer steps."""
    from torch.overrides import TorchFunctionMode

    from cascade.engine import Step
    from cascade.losses import cascade_loss

    net = CascadeNet(create_model("vgg16_cifar", width=0.25), [0.7, 0.4, 0.0], torch.zeros(1, 3, 32, 32))
    opt_w = torch.optim.SGD([p for n, p in net.named_parameters() if n != "scores"], lr=0.01, momentum=0.9)
    opt_s = torch.optim.RMSprop([net.scores], lr=1e-3)
    step = Step(lambda x, y: cascade_loss(net(x), y, torch.zeros(len(y), 10), tau=4.0, lambda_kd=0.5,
                                          lambda_h=0.0), [opt_w, opt_s])
    syncs = []
    names = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"}

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") in names:
                syncs.append(func.__name__)
            return func(*args, **(kwargs or {}))

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    net.train()
    step(x, y)  # warm-up outside the watch
    with Watch():
        step(x, y)
    assert syncs == [], syncs
    # and the watch does see a sync when one happens
    with Watch():
        net.scores.sum().item()
    assert syncs == ["item"]


@pytest.mark.slow
def test_compiled_step_trains_like_the_eager_one():
    """compile=True (the CUDA default) runs the same step through torch.compile: same losses, and the
    one-member cascade keeps its gradient (AOTAutograd once dropped it when m0/loss aliased the loss)."""
    from cascade.engine import Step
    from cascade.losses import cascade_loss

    def small_cnn() -> nn.Module:  # three convs: a cold compile of VGG16's thirteen took 50-66 s here, this 37 s
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    torch.manual_seed(0)
    nets = [CascadeNet(small_cnn(), [0.73], torch.zeros(1, 3, 32, 32)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    losses = []
    for net, compile_ in zip(nets, (False, True)):
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        step = Step(lambda xb, yb, net=net: cascade_loss(net(xb), yb, torch.zeros(4, 10), tau=4.0, lambda_kd=0.4,
                                                          lambda_h=0.0), [opt], compile=compile_)
        losses.append([float(step(x, y)["loss"]) for _ in range(3)])
    assert losses[0] == pytest.approx(losses[1], rel=1e-2)
    assert losses[1][2] != losses[1][0]  # the compiled step does train


def test_a_diverging_epoch_stops_at_the_next_power_of_two_step():
    """The loss is read at steps 1, 2, 4, 8...: NaN from step 3 on stops the epoch at step 4, not at its end."""
    from cascade.data import TensorSplit
    from cascade.engine import train_epoch

    calls = []

    def step(x, y):
        calls.append(len(y))
        return {"loss": torch.tensor(float("nan") if len(calls) >= 3 else 1.0)}

    split = TensorSplit(torch.zeros(64, 3, 4, 4, dtype=torch.uint8), torch.zeros(64, dtype=torch.long),
                        torch.zeros(3), torch.ones(3))
    with pytest.raises(FloatingPointError, match="step 4"):
        train_epoch(step, split, torch.device("cpu"), batch_size=2, generator=torch.Generator().manual_seed(0))
    assert len(calls) == 4  # of 32
    assert train_epoch(lambda x, y: {"loss": torch.tensor(2.0)}, split, torch.device("cpu"), batch_size=2,
                       generator=torch.Generator().manual_seed(0)) == {"loss": 2.0}
