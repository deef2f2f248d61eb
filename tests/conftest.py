import os

import pytest
import torch


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The tests on the session's local Ray instance run last, one after another (the sort is stable): idle, Ray
    keeps a fifth of a core busy (raylet, GCS, agents), which every test after its start would share."""
    items.sort(key=lambda item: "local_ray" in item.fixturenames)


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


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray instance for every in-process search: ``run_search`` joins an initialised Ray and leaves it
    running (the notebook way), where each search would otherwise start and stop its own and spawn fresh
    workers that import torch again (about 8 s a search on 2 cores). Starting Ray from the CLI is covered by
    the searches run as subprocesses (test_resume, test_cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> str:
    """A teacher for ``test_scale.TINY`` searches (digits, VGG16 at 1/8 width), trained once per session and
    passed as ``teacher.checkpoint``: each search would otherwise train its own in its storage. (The smoke search
    still trains its teacher on a worker.)"""
    from cascade.config import load_prune_config
    from cascade.engine import resolve_device
    from cascade.teacher import get_teacher, teacher_location
    from cascade.train import load_prune_data

    from test_scale import TINY as SEARCH  # the searches this teacher serves

    cfg = load_prune_config(None, [f"model.width={SEARCH['prune.model.width']}",
                                   f"teacher.epochs={SEARCH['prune.teacher.epochs']}",
                                   "data.batch_size=64"])
    cache = str(tmp_path_factory.mktemp("tiny-teacher"))
    get_teacher(cfg, load_prune_data(cfg), resolve_device("cpu"), log=lambda s: None, cache=cache)
    return f"{teacher_location(cfg, cache)}/teacher.pt"  # the module get_teacher saved there


@pytest.fixture
def ray_forbidden(monkeypatch):
    """Fail the test if a search gets as far as Ray: bad input is refused before any work."""
    def refuse(*args, **kwargs):
        raise AssertionError("the search reached Ray")

    monkeypatch.setattr("search.api._ray", refuse)


TINY = [  # a prune run small enough for a unit test: digits, VGG16 at 1/8 width, a few epochs
    "model.width=0.125", "teacher.epochs=4", "schedule.joint_epochs=2", "schedule.finetune_epochs=2",
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
