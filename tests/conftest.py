import os
from pathlib import Path

import pytest

SHARED_CIFAR = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpg.tar.xz"


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
