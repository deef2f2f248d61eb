import pytest
import torch

from cascade import CascadeNet, count_flops, create_model
from cascade.masks import keep_count, route_to_teacher
from cascade.export import apply_decisions
from reference_budget import global_topk
from cascade.losses import cascade_loss
from conftest import train_steps

MODELS = ["vgg16_cifar", "resnet56_cifar", "torchvision:resnet18"]


def _trained_net(name, ratios, steps=3, seed=0, prune_stem=True):
    """A CascadeNet whose scores, weights and BN statistics have moved through real training steps."""
    torch.manual_seed(seed)
    net = CascadeNet(create_model(name, num_classes=10, width=0.25), ratios, torch.zeros(2, 3, 32, 32),
                     budget="filters", prune_stem=prune_stem)
    return train_steps(net, steps)


@pytest.mark.parametrize("prune_stem", [True, False], ids=["pruned_stem", "whole_stem"])
@pytest.mark.parametrize("name", MODELS)
def test_exported_member_equals_masked_member(name, prune_stem):
    net = _trained_net(name, [0.7, 0.4, 0.0], prune_stem=prune_stem).eval()
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
        # the saved decisions rebuild the same student from the unpruned member
        rebuilt = apply_decisions(net.plain_member(i), net.decisions(i), (3, 32, 32)).eval()
        with torch.no_grad():
            assert torch.equal(rebuilt(x), exported(x))
    # the student's stem loses filters only when it is pruned (ResNets: with their first residual stage's)
    widths = [m.get_submodule(net.stem_name).out_channels for m in (net.export(0), net.plain_member(0))]
    assert (widths[0] < widths[1]) == prune_stem


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
    stem = net._own_grad  # the pruned stem: each member's own conv, so its own gradient
    assert stem.sum() == net.groups[[g.root for g in net.groups].index(net.stem_name)].size > 0
    shared = ~stem
    assert torch.equal(r[0][shared], o[1][shared]) and torch.equal(r[1][shared], o[2][shared])  # member i+1's
    assert torch.equal(r[:, stem], o[:, stem])                                           # stems: their own
    assert torch.equal(r[2], o[2])                                # the top member keeps its own
    assert not torch.equal(o[0], o[1])                            # the routing is not a no-op
    g = torch.arange(6.0).view(3, 2)
    assert route_to_teacher(g).tolist() == [[2, 3], [4, 5], [4, 5]]


def test_a_two_member_ladder_gives_the_student_the_unpruned_members_scores():
    """[k0, 0]: the student's shared scores start where the unpruned member's do and receive its gradient, so they
    stay equal (docs/method.md: the student's mask is the full network's ranking); its stem scores,
    of its own unshared stem, follow its own gradient and part from the TA's."""
    net = _trained_net("vgg16_cifar", [0.7, 0.0], steps=3)
    shared = ~net._own_grad
    assert torch.equal(net.scores[0][shared], net.scores[1][shared])
    assert not torch.equal(net.scores[0][net._own_grad], net.scores[1][net._own_grad])
    three = _trained_net("vgg16_cifar", [0.7, 0.35, 0.0], steps=3)  # an intermediate TA: a signal of its own
    assert not torch.equal(three.scores[0][~three._own_grad], three.scores[1][~three._own_grad])


@pytest.mark.parametrize("name", ["vgg16_cifar", "resnet56_cifar"])
def test_a_member_is_evaluated_with_the_masks_it_trains_with(name):
    """Eval uses the threshold masks training uses (cached); the fill that tops a member up to its exact budget
    is applied only where a member is exported to be fine-tuned (the student): its eval outputs are those of
    ``export(i, fill=False)``."""
    torch.manual_seed(0)
    net = CascadeNet(create_model(name, num_classes=10, width=0.25), [0.73, 0.4, 0.0], torch.zeros(2, 3, 32, 32))
    train_steps(net, 2)
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        masked = net(x)
        for i in range(net.n):
            assert (net.export(i, fill=False).eval()(x) - masked[i]).abs().max() < 1e-4
    assert torch.equal(net.hard_masks(), net.step_masks())
    added = (net.final_masks() - net.step_masks())
    assert (added >= 0).all()  # the fill only adds filters
    for i in range(net.n - 1):
        trained, filled = (count_flops(net.export(i, fill=f), (3, 32, 32))[0] for f in (False, True))
        assert trained <= filled <= net.targets[i]


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


def test_fused_member_ops_equal_one_module_per_member():
    """MemberBN / MemberStem / MemberHead (one call for all members) give the outputs, gradients and running
    statistics of N separate plain modules applied to each member's rows (row b*N + i is member i's image b)."""
    from cascade.member_ops import MemberBN, MemberHead, MemberStem

    torch.manual_seed(0)
    n, b = 3, 4
    bn = MemberBN(torch.nn.BatchNorm2d(5), n)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    mask = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.float32, requires_grad=True)
    plain = [bn.member(i) for i in range(n)]
    for p in plain:
        p.weight.data, p.bias.data = p.weight.data.clone(), p.bias.data.clone()
    x = torch.randn(b * n, 5, 6, 6, requires_grad=True)
    bn.mask = mask.reshape(-1)
    y = bn.train()(x)
    xs = x.detach().view(b, n, 5, 6, 6).unbind(1)
    xs = [xi.clone().requires_grad_(True) for xi in xs]
    ms = [mask[i].detach().clone().requires_grad_(True) for i in range(n)]
    ys = [p.train()(xi) * mi.view(1, -1, 1, 1) for p, xi, mi in zip(plain, xs, ms)]
    assert torch.allclose(y.view(b, n, 5, 6, 6), torch.stack(ys, 1), atol=1e-5)
    g = torch.randn_like(y)
    y.backward(g)
    torch.autograd.backward(ys, list(g.view(b, n, 5, 6, 6).unbind(1)))
    for i in range(n):
        assert torch.allclose(x.grad.view(b, n, 5, 6, 6)[:, i], xs[i].grad, atol=1e-5)
        assert torch.allclose(mask.grad[i], ms[i].grad, atol=1e-4)
        assert torch.allclose(bn.weight.grad.view(n, 5)[i] * mask[i], plain[i].weight.grad * mask[i], atol=1e-4)
        assert torch.allclose(bn.running_mean.view(n, 5)[i], plain[i].running_mean, atol=1e-6)
        assert torch.allclose(bn.running_var.view(n, 5)[i], plain[i].running_var, atol=1e-6)

    stem = MemberStem(torch.nn.Conv2d(3, 4, 3, padding=1), n)
    with torch.no_grad():
        stem.conv.weight.add_(torch.randn_like(stem.conv.weight))
    img = torch.randn(b, 3, 8, 8)
    out = stem(img).view(b, n, 4, 8, 8)
    for i in range(n):
        assert torch.allclose(out[:, i], stem.member(i)(img), atol=1e-5)

    head = MemberHead(torch.nn.Linear(6, 2), n)
    with torch.no_grad():
        head.weight.add_(torch.randn_like(head.weight))
    feats = torch.randn(b * n, 6)
    logits = head(feats).view(b, n, 2)
    for i in range(n):
        assert torch.allclose(logits[:, i], head.member(i)(feats.view(b, n, 6)[:, i]), atol=1e-5)


def test_relu6_passes_the_gradient_at_zero():
    from cascade.member_ops import ReLU6PassZero, ReLUPassZero

    for act in (ReLUPassZero(), ReLU6PassZero()):
        x = torch.tensor([-1.0, 0.0, 2.0, 7.0], requires_grad=True)
        act(x).sum().backward()
        assert torch.equal(act(x.detach()), torch.nn.ReLU6()(x.detach()) if isinstance(act, ReLU6PassZero)
                           else torch.relu(x.detach()))
        assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0 if isinstance(act, ReLUPassZero) else 0.0]


class _Concat(torch.nn.Module):
    """Two convs concatenated into one BatchNorm (as in DenseNet): that BN's channels come from two groups."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.a = torch.nn.Conv2d(8, 6, 3, padding=1, bias=False)
        self.b = torch.nn.Conv2d(8, 4, 3, padding=1, bias=False)
        self.bn = torch.nn.BatchNorm2d(10)
        self.conv = torch.nn.Conv2d(10, 12, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(12)
        self.fc = torch.nn.Linear(12, 10)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        x = torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], 1)))
        x = torch.relu(self.bn2(self.conv(x)))
        return self.fc(x.mean((2, 3)))


def test_a_batchnorm_fed_by_a_concatenation_composes_its_mask_from_every_group():
    torch.manual_seed(0)
    net = train_steps(CascadeNet(_Concat(), [0.5, 0.0], torch.zeros(1, 3, 8, 8), budget="filters"), 2)
    assert sorted(g.root for g in net.groups if any(bn == "bn" for bn, _ in g.bns)) == ["a", "b"]
    net.eval()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        masked = net(x)[0]
        assert (net.export(0).eval()(x) - masked).abs().max() < 1e-5


def test_a_model_without_batchnorm_is_refused_naming_a_layer():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Conv2d(8, 8, 3),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10))
    with pytest.raises(ValueError, match=r"^cannot prune: no BatchNorm .*conv '0'"):
        CascadeNet(model, [0.5], torch.zeros(1, 3, 16, 16))


def test_hint_points_are_the_last_blocks():
    """VGG: its last three conv layers (their BN outputs); ResNet-50: its last three residual blocks."""
    vgg = CascadeNet(create_model("vgg16_cifar", width=0.25), [0.5], torch.zeros(1, 3, 32, 32))
    assert vgg.hint_names == ["features.35", "features.38", "features.41"]  # the last three BNs
    assert all(type(vgg.body.get_submodule(n)).__name__ == "MemberBN" for n in vgg.hint_names)
    r50 = CascadeNet(create_model("torchvision:resnet50", num_classes=10), [0.5], torch.zeros(1, 3, 32, 32))
    assert r50.hint_names == ["layer4.0", "layer4.1", "layer4.2"]
    _, feats = r50.train()(torch.randn(2, 3, 32, 32), with_features=True)
    assert [f.shape for f in feats[0]] == [torch.Size([2, 2048, 1, 1])] * 3


def test_groups_listed_with_the_index_mapping_computed_once_equal_torch_prunings_own_listing(monkeypatch):
    """find_groups computes Torch-Pruning's concat index mappings once, not before every group (quadratic in a
    DenseNet's concatenations): the groups must be the ones the library's own per-group recomputation gives."""
    import contextlib

    import torch_pruning as tp
    from torchvision.models import DenseNet

    from cascade import groups

    model = DenseNet(growth_rate=8, block_config=(3, 3), num_init_features=16, num_classes=10).eval()
    x = torch.zeros(1, 3, 32, 32)
    update, calls = tp.dependency.index_mapping.update_index_mapping, []
    monkeypatch.setattr(tp.dependency.index_mapping, "update_index_mapping",
                        lambda graph: calls.append(1) or update(graph))
    once = groups.find_groups(model, x, ignored=["classifier"])
    assert len(calls) == 2  # building the graph, then once for all groups (not once per group)
    monkeypatch.setattr(groups, "_index_mapping_once", lambda dg: contextlib.nullcontext())
    calls.clear()
    every_time = groups.find_groups(model, x, ignored=["classifier"])
    assert len(calls) > len(every_time)  # the library's way: before every group
    assert once == every_time and any(len(g.bns) > 1 for g in once)  # concatenations were mapped


def test_the_taylor_signal_ranks_filters_by_their_mean_gradient_magnitude_per_cost():
    from cascade.masks import TaylorSaliency

    start = torch.tensor([[0.2, 0.4, 0.6, 0.8]])
    cost = torch.tensor([1.0, 1.0, 2.0, 4.0])
    sal = TaylorSaliency(start, cost, warmup=2)
    scores = start.clone()
    sal.update(scores, torch.tensor([[1.0, -3.0, 4.0, 4.0]]))   # halfway: half start, half saliency
    per_cost = torch.tensor([1.0, 3.0, 2.0, 1.0])
    target = per_cost / per_cost.mean() * start.mean()
    assert torch.allclose(scores, 0.5 * start + 0.5 * target)
    sal.update(scores, torch.tensor([[-1.0, 3.0, -4.0, -4.0]]))  # the signs cancel, the magnitudes do not
    assert torch.allclose(scores, target)
    assert scores.argsort().tolist() == [[0, 3, 2, 1]]


@pytest.mark.slow
def test_a_run_with_the_taylor_signal_moves_the_masks(tmp_path):
    from cascade import load_prune_config, run_prune
    from conftest import TINY

    cfg = load_prune_config(None, TINY + ["cascade.ratios=[0.7,0.0]", "cascade.score_signal=taylor"])
    r = run_prune(cfg, tmp_path, log=lambda s: None)
    joint = [h for h in r["history"] if h["phase"] == "joint"]
    assert joint[-1]["score_spearman_start/m0"] < 0.9  # the scores left their L1 start
    # and so did the masks a member is evaluated and exported with (a stale cache once kept them at the start)
    assert joint[-1]["mask_jaccard_start/m0"] < 0.95 and sum(h["churn/m0"] for h in joint) > 0
    assert r["flops_reduction"] >= 0.7
