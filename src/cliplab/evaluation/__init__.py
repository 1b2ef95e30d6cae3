"""The paper's evaluation protocols on frozen CLIP features (any model cliplab can load).

- :mod:`~cliplab.evaluation.registry`: every protocol by name (zero-shot, prompts, linear
  probe, few-shot, retrieval, robustness), each a module of ``protocols/`` following
  :mod:`~cliplab.evaluation.protocol`: options, a typed result, ``run``;
- :mod:`cliplab.data.evalsets`: classification and retrieval sets (re-exported here);
- :mod:`~cliplab.evaluation.metrics`: ranks with one tie rule, top-k, confusion matrices;
- :mod:`~cliplab.evaluation.probe`: L-BFGS logistic regression and the paper's C search;
- :mod:`~cliplab.evaluation.effective_robustness`: baselines and effective robustness;
- :mod:`~cliplab.evaluation.report`: several models in one Markdown report;
- :mod:`~cliplab.evaluation.training`: any protocol as an evaluator for the training loop.

Features come from :mod:`cliplab.encode` (:class:`~cliplab.encode.FeatureStore`); zero-shot
classification itself is :mod:`cliplab.zeroshot`::

    store = FeatureStore(model, preprocess, cache_dir="~/.cache/cliplab/eval")
    result = PROTOCOLS["zeroshot"](store, dataset=load_classification("data/eval/emoji-google"))
    print(result.summary())
"""

from cliplab.data.evalsets import (
    ClassificationSet,
    RetrievalSet,
    load_classification,
    load_retrieval,
)
from cliplab.encode import FeatureStore
from cliplab.evaluation.protocol import Input, Protocol, Result, Row
from cliplab.evaluation.registry import PROTOCOLS, get, result_from_dict
from cliplab.evaluation.report import ModelRun, write_report
from cliplab.evaluation.training import ProtocolEvaluator, evaluator_from_spec

__all__ = [
    "PROTOCOLS",
    "ClassificationSet",
    "FeatureStore",
    "Input",
    "ModelRun",
    "Protocol",
    "ProtocolEvaluator",
    "Result",
    "RetrievalSet",
    "Row",
    "evaluator_from_spec",
    "get",
    "load_classification",
    "load_retrieval",
    "result_from_dict",
    "write_report",
]
