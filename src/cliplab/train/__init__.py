"""CLIP contrastive pre-training: the application built on the ``cliplab`` library.

``cliplab train CONFIG.toml`` (or ``torchrun --nproc_per_node N -m cliplab train ...``) runs
``Trainer(load_config(...)).fit()``. The library (``cliplab.*`` outside this package and the
CLI) never imports it.
"""

from cliplab.evaluation.training import Evaluator
from cliplab.train.config import Config, load_config
from cliplab.train.trainer import INTERRUPTED_EXIT, NonFiniteError, StepResult, Trainer

__all__ = [
    "INTERRUPTED_EXIT",
    "Config",
    "Evaluator",
    "NonFiniteError",
    "StepResult",
    "Trainer",
    "load_config",
]
