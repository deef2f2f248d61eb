import os

import pytest
import torch



@pytest.fixture(scope="session", autouse=True)
def _cache(tmp_path_factory):
    """One cache (decoded data, trained teachers) per test session, never the user's."""
    os.environ["CASCADE_CACHE"] = str(tmp_path_factory.mktemp("cascade-cache"))
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    yield


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI, which later searches (and their subprocesses)
    would follow: restore it after every test."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    if os.environ.get("MLFLOW_TRACKING_URI") != before:
        import mlflow

        mlflow.set_tracking_uri(before)


TINY = [  # a prune run small enough for a unit test: digits, VGG16 at quarter width, a few epochs
    "model.width=0.25", "teacher.epochs=4", "schedule.joint_epochs=2", "schedule.finetune_epochs=2",
    "data.batch_size=64",
]


def train_steps(net, steps: int, *, batch: int = 16, lr: float = 0.05, score_lr: float | None = None):
    """Real training steps on random data: weights by SGD; scores by RMSProp at ``score_lr``, else the same SGD."""
    from cascade.losses import cascade_loss

    weights = [p for n, p in net.named_parameters() if score_lr is None or not n.startswith("scores")]
    opts = [torch.optim.SGD(weights, lr=lr)] + ([torch.optim.RMSprop([net.scores], lr=score_lr)] if score_lr else [])
    net.train()
    for _ in range(steps):
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
        logits = net(x)
        loss = cascade_loss(logits, y, logits[-1].detach(), tau=4.0, lambda_kd=0.5, lambda_h=0.0)["loss"]
        for o in opts:
            o.zero_grad()
        loss.backward()
        for o in opts:
            o.step()
    return net
