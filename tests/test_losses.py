"""The joint loss's weighting, the members' own gradients, the hint's reduction, the score lr's scaling."""
import pytest
import torch

from cascade import PruneConfig, create_model
from cascade.losses import HintPlan, cascade_loss, hint_loss, member_loss, member_weights
from cascade.members import CascadeNet
from cascade.train import SCORE_TRAVEL, own_grads_in_full, score_lr


@pytest.mark.parametrize("n, student_weight, expected", [
    (1, None, [1.0]), (1, 0.7, [1.0]), (3, None, [1 / 3] * 3), (3, 0.5, [0.5, 0.25, 0.25]), (2, 0.75, [0.75, 0.25])])
def test_member_weights_sum_to_one(n, student_weight, expected):
    w = member_weights(n, student_weight)
    assert w == pytest.approx(expected) and sum(w) == pytest.approx(1.0)


def test_own_parameters_get_their_members_whole_gradient_shared_weights_the_weighted_sum():
    torch.manual_seed(0)
    net = CascadeNet(create_model("vgg16_cifar", width=0.25), [0.5, 0.3, 0.0], torch.zeros(2, 3, 32, 32))
    net.train()
    x, y, t = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)), torch.randn(8, 10)
    weights = member_weights(3, 0.5)
    own = net.member_parameters()
    shared = [p for p in net.body.parameters() if all(p is not q for q in own)]
    assert own and shared and len(own) + len(shared) == len(list(net.body.parameters()))

    def grads(loss_of) -> list[torch.Tensor]:
        net.zero_grad()
        torch.manual_seed(1)  # the same forward (BN batch statistics) every time
        logits = net(x)
        loss_of(logits).backward()
        return [p.grad.clone() for p in own + shared]

    kw = dict(tau=4.0, lambda_kd=0.5, lambda_h=0.0)
    per_member = [grads(lambda lg, i=i: member_loss(lg[i], y, lg[i + 1] if i < 2 else t, **kw)["loss"])
                  for i in range(3)]
    net.zero_grad()
    cascade_loss(net(x), y, t, weights=weights, **kw)["loss"].backward()
    own_grads_in_full(net, weights)()
    joint = [p.grad for p in own + shared]
    for k, p in enumerate(own):  # member i's rows: exactly L_i's gradient, not w_i times it
        for i in range(3):
            torch.testing.assert_close(joint[k].view(3, -1)[i], per_member[i][k].view(3, -1)[i], rtol=1e-4,
                                       atol=1e-6)
    for k in range(len(own), len(own) + len(shared)):
        torch.testing.assert_close(joint[k], sum(w * g[k] for w, g in zip(weights, per_member)), rtol=1e-4,
                                   atol=1e-6)


def test_hint_is_the_per_sample_squared_distance_and_the_plan_matches_the_full_width_one():
    torch.manual_seed(0)
    s, t = torch.randn(4, 6, 3, 3), torch.randn(4, 6, 3, 3)
    assert hint_loss([s], [t]).item() == pytest.approx(((s - t) ** 2).sum().item() / 4, rel=1e-5)
    s_kept, t_kept = torch.tensor([0, 2, 3]), torch.tensor([1, 2, 4, 5])
    s_full, t_full = torch.zeros_like(s), torch.zeros_like(t)
    s_full[:, s_kept], t_full[:, t_kept] = s[:, s_kept], t[:, t_kept]
    plan = HintPlan(s_kept, t_kept, full=6, device=torch.device("cpu"))
    got = hint_loss([s[:, s_kept]], [t[:, t_kept]], [plan])
    assert got.item() == pytest.approx(hint_loss([s_full], [t_full]).item(), rel=1e-5)


def test_score_lr_is_scaled_to_the_joint_phase_unless_set():
    cfg = PruneConfig()
    cfg.schedule.joint_epochs = 4
    assert score_lr(cfg, steps_per_epoch=78) == pytest.approx(SCORE_TRAVEL / 312)
    cfg.schedule.joint_epochs = 80  # 10x the steps: 1/10 the lr, the same travel
    assert score_lr(cfg, steps_per_epoch=39) == pytest.approx(SCORE_TRAVEL / 3120)
    cfg.optim.score_schedule = "cosine"  # annealed to 0: twice the peak for the same travel
    assert score_lr(cfg, steps_per_epoch=39) == pytest.approx(2 * SCORE_TRAVEL / 3120)
    cfg.optim.score_lr = 1e-4
    assert score_lr(cfg, steps_per_epoch=78) == 1e-4
