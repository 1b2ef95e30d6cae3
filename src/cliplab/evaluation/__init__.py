"""The paper's evaluation protocols on frozen CLIP features (any model cliplab can load).

- :mod:`~cliplab.evaluation.metrics`: top-k, confusion matrix, per-class recall;
- :mod:`~cliplab.evaluation.features`: batched image features, cached per model and set;
- :mod:`~cliplab.evaluation.linear_probe`: L-BFGS logistic regression, the paper's C search;
- :mod:`~cliplab.evaluation.fewshot`: k-shot probes against zero-shot (Figure 6);
- :mod:`~cliplab.evaluation.retrieval`: Recall@K with several captions per image;
- :mod:`~cliplab.evaluation.prompts`: the prompt-engineering ablation;
- :mod:`~cliplab.evaluation.robustness`: accuracy under shift, effective robustness;
- :mod:`~cliplab.evaluation.protocols`: each protocol end to end on a model;
- :mod:`~cliplab.evaluation.report`: Markdown and plots; :mod:`~cliplab.evaluation.hooks`:
  evaluators for the training loop.

Zero-shot classification itself is :mod:`cliplab.zeroshot`.
"""

from cliplab.evaluation.datasets import (
    ClassificationSet,
    RetrievalSet,
    load_classification,
    load_retrieval,
)
from cliplab.evaluation.features import FeatureStore, encode_images
from cliplab.evaluation.fewshot import FewShotResult, few_shot_curve
from cliplab.evaluation.hooks import RetrievalHook, ZeroShotHook
from cliplab.evaluation.linear_probe import (
    LinearClassifier,
    ProbeResult,
    fit_logistic_regression,
)
from cliplab.evaluation.metrics import classification_metrics, confusion_matrix
from cliplab.evaluation.protocols import (
    Suite,
    run_fewshot,
    run_linear_probe,
    run_prompts,
    run_retrieval,
    run_robustness,
    run_suite,
    run_zeroshot,
)
from cliplab.evaluation.retrieval import retrieval_metrics
from cliplab.evaluation.robustness import effective_robustness, fit_baseline

__all__ = [
    "ClassificationSet",
    "FeatureStore",
    "FewShotResult",
    "LinearClassifier",
    "ProbeResult",
    "RetrievalHook",
    "RetrievalSet",
    "Suite",
    "ZeroShotHook",
    "classification_metrics",
    "confusion_matrix",
    "effective_robustness",
    "encode_images",
    "few_shot_curve",
    "fit_baseline",
    "fit_logistic_regression",
    "load_classification",
    "load_retrieval",
    "retrieval_metrics",
    "run_fewshot",
    "run_linear_probe",
    "run_prompts",
    "run_retrieval",
    "run_robustness",
    "run_suite",
    "run_zeroshot",
]
