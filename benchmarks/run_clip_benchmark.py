"""Run LAION's ``clip_benchmark`` command line on this machine's CPU build of torch.

``clip_benchmark eval ...`` as it is, with two things made to work here: torchvision's
compiled extension does not load against the CPU torch (its pure-Python transforms are
registered without it, as ``tests/refs.py`` does for the parity tests), and its ``accuracy``
converts a one-element array to a float, which NumPy 2.4 refuses (the same value through
``.item()``). Used by ``bench_suite.py``::

    python benchmarks/run_clip_benchmark.py eval --dataset wds/x --dataset_root ROOT ...
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import torch  # noqa: E402

import refs  # noqa: E402


def _accuracy(output: torch.Tensor, target: torch.Tensor, topk=(1,)) -> list[float]:
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    n = len(target)
    return [float(correct[:k].reshape(-1).float().sum(0, keepdim=True).item()) / n for k in topk]


def main() -> None:
    refs.install_torchvision_shim()
    from clip_benchmark import cli
    from clip_benchmark.metrics import linear_probe, zeroshot_classification

    zeroshot_classification.accuracy = _accuracy
    linear_probe.accuracy = _accuracy
    sys.argv = ["clip_benchmark", *sys.argv[1:]]
    cli.main()


if __name__ == "__main__":
    main()
