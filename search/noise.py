"""Known noise, silenced unless ``--verbose``: Ray Tune's periodic "Experiment state snapshotting" warnings,
MLflow's warning that a pickled model may not load across versions (the student is pickled on purpose: a
pruned module no longer fits its class's state_dict), Optuna's notes on experimental sampler options, and
Tune's own tables and banners (its newer console output)."""
from __future__ import annotations

import logging
import os
import warnings

__all__ = ["quiet"]

_LOGGERS = ("ray.tune", "ray.train", "ray.air", "mlflow", "alembic", "optuna")


def quiet() -> None:
    """Raise the known-noisy loggers to ERROR and drop their known warnings, in this process."""
    for name in _LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=r".*(pickle|cloudpickle|snapshotting|Experiment state).*")
    warnings.filterwarnings("ignore", message=r".*is an experimental feature.*")
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"  # read when a Tuner runs: the old output, at verbose 0, prints nothing
