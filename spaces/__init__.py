"""Search spaces: YAML files and their validation. Imports without optuna, ray or mlflow (sampling is in
``search.sampling``), so benchmarks and config checks run anywhere ``cascade`` does."""
from pathlib import Path

from .ratios import PLACEMENTS, member_ratios
from .space import ALIASES, LADDER_KEYS, SPEC_KEYS, Param, Space, cascade_only, parse_space

SPACES_DIR = Path(__file__).resolve().parent

__all__ = ["ALIASES", "LADDER_KEYS", "PLACEMENTS", "Param", "SPACES_DIR", "SPEC_KEYS", "Space", "cascade_only",
           "member_ratios", "parse_space"]
