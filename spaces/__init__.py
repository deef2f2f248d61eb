"""Search spaces: YAML -> validated ``Space`` -> Optuna define-by-run sampling. Knows nothing of Ray."""
from pathlib import Path

from .ratios import PLACEMENTS, member_ratios
from .samplers import SAMPLERS, make_sampler
from .space import ALIASES, Param, Space, SpaceError, parse_space, sample_space

SPACES_DIR = Path(__file__).resolve().parent

__all__ = ["ALIASES", "PLACEMENTS", "Param", "SAMPLERS", "SPACES_DIR", "Space", "SpaceError", "make_sampler",
           "member_ratios", "parse_space", "sample_space"]
