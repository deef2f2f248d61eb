"""The teacher, trained (or loaded) once per search in a Ray task with a trial's resources, so on a GPU worker
and never on a CPU-only head; cached in the shared storage under its config hash, where every trial loads it."""
from __future__ import annotations

from typing import Any

from cascade.config import ConfigError

__all__ = ["teacher_on_worker"]


def _train(base: dict[str, Any], cache: str, gpus: float, cpus: float) -> float:
    """Runs in a Ray worker: returns the teacher's test accuracy; the teacher itself stays in ``cache``."""
    import torch

    from cascade.config import prune_config
    from cascade.teacher import get_teacher
    from cascade.train import load_prune_data

    torch.set_num_threads(max(1, int(cpus)))
    cfg = prune_config(base)
    if cfg.device == "auto":
        cfg.device = "cuda" if gpus > 0 and torch.cuda.is_available() else "cpu"
    return get_teacher(cfg, load_prune_data(cfg), torch.device(cfg.device), cache=cache)[1]


def teacher_on_worker(base: dict[str, Any], *, cache: str, cpus: float, gpus: float) -> float:
    """Train or load the teacher in a Ray task with these resources; a bad data root or teacher checkpoint
    comes back as the ConfigError it is (exit 2), not as a remote traceback."""
    import ray

    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(_train)
    try:
        return ray.get(task.remote(base, cache, gpus, cpus))
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ConfigError):  # a field of the search's prune section
            raise ConfigError(f"prune.{e.cause.field}", e.cause.message) from None
        raise
