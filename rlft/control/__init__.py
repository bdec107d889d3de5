"""Classic control on gymnasium: the same `rlft.algos` functions that train language models, on small MLPs.
Importing the package registers every algorithm in `CONTROL_ALGOS`."""

from . import a2c, ppo, reinforce, trpo  # imported for their registration
from .config import CONTROL_ALGOS, PRESETS, ControlConfig, preset_for
from .evaluate import evaluate
from .train import TrainResult, train

__all__ = [
    "CONTROL_ALGOS",
    "PRESETS",
    "ControlConfig",
    "TrainResult",
    "evaluate",
    "preset_for",
    "train",
]
