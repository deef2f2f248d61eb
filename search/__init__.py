"""Search: Optuna samples cascades from a YAML space, Ray Tune runs them as trials, MLflow records them.

The names below load on first use (``cascade --help`` starts without torch, ray or mlflow)."""
from importlib import import_module

_EXPORTS = {
    "SearchConfig": ".config", "SearchResult": ".api", "TrialRecord": ".record", "load_config": ".config",
    "load_result": ".api", "pareto_front": ".frontier", "resume_search": ".api", "run_search": ".api",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
