"""Cascaded channel pruning with hierarchical self-distillation, in pure PyTorch (+ Torch-Pruning).

The names below load on first use, so the config and the command line (``--help``) start without torch."""
from importlib import import_module

_EXPORTS = {
    "CascadeNet": ".members", "ConfigError": ".config", "DataError": ".data", "PruneConfig": ".config",
    "count_flops": ".flops", "create_model": ".models", "list_models": ".models", "load_data": ".data",
    "load_prune_config": ".config", "prune_epochs": ".train", "register_model": ".models", "run_prune": ".train",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
