"""Search spaces: their validation and the TA placements. Imports without optuna, ray or mlflow (sampling is
in ``search.sampling``), so benchmarks and config checks run anywhere ``cascade`` does. The shipped search
configs are in configs/."""

from .ratios import PLACEMENTS, member_ratios
from .space import ALIASES, LADDER_KEYS, SPEC_KEYS, Param, Space, cascade_only, parse_space, space_targets

__all__ = ["ALIASES", "LADDER_KEYS", "PLACEMENTS", "Param", "SPEC_KEYS", "Space", "cascade_only",
           "member_ratios", "parse_space", "space_targets"]
