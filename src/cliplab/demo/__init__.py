"""The main job, end to end (``cliplab demo``, ``make demo``) and the paper's findings at our
scale (``cliplab reproduce``, ``make reproduce``).

An application package like :mod:`cliplab.train`: it ties the library (evaluation, data) and
the dataset recipes (:mod:`cliplab.recipes`) to the trainer, so the library never imports
it. One module per step: :mod:`~cliplab.demo.plan`, :mod:`~cliplab.demo.train`,
:mod:`~cliplab.demo.evaluate`, :mod:`~cliplab.demo.report`; :mod:`~cliplab.demo.pipeline`
runs them in order.
"""

from cliplab.demo.pipeline import DemoResult, run_demo

__all__ = ["DemoResult", "run_demo"]
