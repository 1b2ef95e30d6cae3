"""The main job, end to end (``cliplab demo``, ``make demo``) and the paper's findings at our
scale (``cliplab reproduce``, ``make reproduce``).

An application package like :mod:`cliplab.train`: it ties the library (data builders,
models, evaluation) to the trainer, so the library never imports it.
"""

from cliplab.demo.pipeline import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
