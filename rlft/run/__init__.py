"""Run infrastructure: typed configs, atomic writes, metrics logging, progress bars, seeding, run
directories and plots. Importing this package stays cheap: TensorBoard and matplotlib load on first use."""

from .atomic import atomic_path, atomic_torch_save, atomic_write_bytes, atomic_write_json, atomic_write_text
from .config import ConfigError, config_to_dict, load_config, parse_overrides, save_config
from .lock import RunInUseError, RunLock
from .metrics import MetricsWriter, read_metrics
from .plots import plot_metrics, plot_run
from .progress import Progress
from .rundir import CheckpointError, RunDir, RunDirError
from .seeding import capture_rng_state, restore_rng_state, seed_everything
from .skips import NonFiniteError, StepSkips, first_nonfinite
from .stopping import RunInterrupted, StopSignals

__all__ = [
    "CheckpointError",
    "ConfigError",
    "MetricsWriter",
    "NonFiniteError",
    "Progress",
    "RunDir",
    "RunDirError",
    "RunInUseError",
    "RunInterrupted",
    "RunLock",
    "StepSkips",
    "StopSignals",
    "atomic_path",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "capture_rng_state",
    "config_to_dict",
    "first_nonfinite",
    "load_config",
    "parse_overrides",
    "plot_metrics",
    "plot_run",
    "read_metrics",
    "restore_rng_state",
    "save_config",
    "seed_everything",
]
