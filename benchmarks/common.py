"""What the side-by-side benchmarks share: the machine and versions, the peers (OpenCLIP and
transformers, imported as the parity tests import them), the demo model's config, timing
and a plain-text table."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # refs.py: the reference packages, importable on CPU

import refs  # noqa: E402
from cliplab.config import CLIPConfig  # noqa: E402
from cliplab.presets import get_config  # noqa: E402
from cliplab.runtime import cpu_name  # noqa: E402  (re-exported for the scripts)

RESULTS = ROOT / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """The machine and the versions of everything timed."""
    from cliplab.runtime import cpu_has_bf16

    versions = {}
    for package in ("torch", "open_clip_torch", "transformers", "onnxruntime", "tokenizers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    flags = ""
    if Path("/proc/cpuinfo").exists():
        flags = Path("/proc/cpuinfo").read_text()
    return {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_instructions": cpu_has_bf16(),
        "amx": "amx_bf16" in flags,
        "python": platform.python_version(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def demo_config() -> CLIPConfig:
    """The demo recipe's model (``src/cliplab/demo/recipe.toml``)."""
    import tomllib

    recipe = tomllib.loads((ROOT / "src" / "cliplab" / "demo" / "recipe.toml").read_text())
    settings = {k: v for k, v in recipe["model"].items() if k != "name"}
    return get_config(recipe["model"]["name"], **settings)


def model_config(name: str) -> CLIPConfig:
    return demo_config() if name == "demo" else get_config(name)


def open_clip_model(config: CLIPConfig) -> torch.nn.Module:
    """OpenCLIP's model with the same architecture as ``config``: the ``model_cfg`` that
    ``cliplab convert --to open_clip`` writes (:func:`config_to_openclip`)."""
    from cliplab.checkpoints.openclip import config_to_openclip

    oc = refs.open_clip()
    model_cfg = config_to_openclip(config)
    custom = model_cfg.pop("custom_text", False)
    return (oc.model.CustomTextCLIP if custom else oc.model.CLIP)(**model_cfg)


#: Caption words of the benchmarks' inputs.
WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "red",
    "green",
    "blue",
    "small",
    "large",
    "old",
    "new",
    "happy",
    "dog",
    "cat",
    "car",
    "tree",
    "house",
    "face",
    "hand",
    "on",
    "street",
    "at",
    "night",
]


def sample_inputs(
    config: CLIPConfig, n: int, device: str | torch.device = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded random images and captions of 4-14 words (typical alt-text lengths), tokenized
    to the model's context: the same inputs for cliplab and every peer."""
    import cliplab

    g = torch.Generator().manual_seed(0)
    size = config.vision.image_size
    images = torch.randn(n, 3, size, size, generator=g)
    lengths = torch.randint(4, 15, (n,), generator=g).tolist()
    picks = torch.randint(0, len(WORDS), (n, 14), generator=g).tolist()
    captions = [" ".join(WORDS[p] for p in row[:k]) for row, k in zip(picks, lengths)]
    tokens = cliplab.tokenize(captions, context_length=config.text.context_length, truncate=True)
    return images.to(device), tokens.to(device)


def rate(fn: Callable[[], Any], items: int, repeat: int, warmup: int = 1) -> float:
    """Items per second of ``fn`` (each call handles ``items``), after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return items * repeat / (time.perf_counter() - start)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of ``rows`` (floats to 3 significant figures)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return "" if v is None else str(v)

    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def train_and_score(
    settings: list[str],
    data: Path,
    output: Path,
    sets: Sequence[str],
    recipe: str | Path | None = None,
    slices: dict[str, tuple[Sequence[str], Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """Train the demo recipe (or ``recipe``) with ``--set`` style ``settings`` into
    ``output`` (resuming a run cut short) and ``score`` its model:
    ``{"minutes", "steps", "samples_per_s", <column>: top-1, ...}``."""
    from cliplab.demo.plan import training_config
    from cliplab.train import Trainer

    config = training_config(recipe, data, output, [*settings, "eval.interval=0"])
    start = time.perf_counter()
    summary = Trainer(config).fit()
    row: dict[str, Any] = {
        "minutes": (time.perf_counter() - start) / 60,
        "steps": summary["step"],
        "samples_per_s": summary.get("last", {}).get("samples_per_s"),
    }
    return row | score(output / "model", data, sets, slices)


def score(
    model_dir: Path,
    data: Path,
    sets: Sequence[str],
    slices: dict[str, tuple[Sequence[str], Sequence[str]]] | None = None,
) -> dict[str, float]:
    """Zero-shot top-1 and top-5 (%) of the model in ``model_dir`` on ``sets`` (names under
    ``data/eval``), ``{<set>: top-1, <set> top5: top-5}``. ``slices``: more columns,
    ``{column: (sets, class names)}``: each set's examples of those of the classes it has,
    classified among them alone, pooled over the sets (weighted by their images)."""
    import cliplab
    from cliplab.demo.evaluate import load_sets
    from cliplab.encode import FeatureStore
    from cliplab.evaluation.registry import get

    model, preprocess = cliplab.load(model_dir)
    store = FeatureStore(model, preprocess, batch_size=256, progress=False)
    zeroshot = get("zeroshot")
    slices = slices or {}
    wanted = list(dict.fromkeys([*sets, *(x for names, _ in slices.values() for x in names)]))
    loaded = {}
    for _, values, _ in load_sets(data, [("zeroshot", {"dataset": s}, None) for s in wanted]):
        loaded[values["dataset"].name] = values["dataset"]
    row: dict[str, float] = {}
    for name in sets:
        result = zeroshot(store, zeroshot.make_options({}), dataset=loaded[name])
        row[name] = 100 * result.top1
        row[name + " top5"] = 100 * result.top5
    for column, (names, classes) in slices.items():
        correct1 = correct5 = images = 0.0
        for name in names:
            have = {c.casefold() for c in loaded[name].classnames}
            part = loaded[name].only_classes([c for c in classes if c.casefold() in have])
            result = zeroshot(store, zeroshot.make_options({}), dataset=part)
            correct1 += result.top1 * len(part)
            correct5 += result.top5 * len(part)
            images += len(part)
        row[column] = 100 * correct1 / images
        row[column + " top5"] = 100 * correct5 / images
        row[column + " images"] = images
    return row
