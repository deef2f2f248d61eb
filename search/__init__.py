"""Search: Optuna samples cascades from a YAML space, Ray Tune runs them as trials, MLflow records them."""
from .api import SearchResult, load_result, resume_search, run_search
from .config import SearchConfig, load_config
from .frontier import pareto_front
from .record import TrialRecord

__all__ = ["SearchConfig", "SearchResult", "TrialRecord", "load_config", "load_result", "pareto_front",
           "resume_search", "run_search"]
