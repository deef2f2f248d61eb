"""Cascaded channel pruning with hierarchical self-distillation, in pure PyTorch (+ Torch-Pruning)."""
from .config import ConfigError, PruneConfig, load_prune_config
from .data import DataError, load_data
from .flops import count_flops
from .members import CascadeNet
from .models import create_model, list_models, register_model
from .train import prune_epochs, run_prune

__all__ = [
    "CascadeNet", "ConfigError", "DataError", "PruneConfig", "count_flops", "create_model", "list_models",
    "load_data", "load_prune_config", "prune_epochs", "register_model", "run_prune",
]
