"""The training harness and the ``jaxsparse train`` command.

An optional extra (``pip install jaxsparse[train]``) kept apart from the core: ``import jaxsparse``
never imports it. One :class:`Config` describes a run; :func:`train` runs it with checkpoints,
a metrics log, a summary and plots, and resumes it bit-identically after an interruption.

Example:
  >>> from jaxsparse.training import Config
  >>> Config(method="set", sparsity=0.95, dataset="digits").distribution
  'erk'
"""

from jaxsparse.training._build import learning_rate_schedule, make_algorithm, make_optimizer
from jaxsparse.training._cache import compilation_cache
from jaxsparse.training._checkpoint import Checkpoints
from jaxsparse.training._cli import build_parser, main
from jaxsparse.training._config import LR_SCHEDULES, OPTIMIZERS, Config, ConfigError, method_names, read_settings
from jaxsparse.training._loop import TrainResult, make_train_step, train
from jaxsparse.training._metrics import COLUMNS, MetricsLog, mask_change
from jaxsparse.training._plots import plot_run, run_figures
from jaxsparse.training._report import git_commit, run_report, versions

__all__ = [
    "COLUMNS",
    "Checkpoints",
    "Config",
    "ConfigError",
    "LR_SCHEDULES",
    "MetricsLog",
    "OPTIMIZERS",
    "TrainResult",
    "build_parser",
    "compilation_cache",
    "git_commit",
    "learning_rate_schedule",
    "main",
    "make_algorithm",
    "make_optimizer",
    "make_train_step",
    "method_names",
    "mask_change",
    "plot_run",
    "read_settings",
    "run_figures",
    "run_report",
    "train",
    "versions",
]
