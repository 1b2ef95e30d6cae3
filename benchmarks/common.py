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
from cliplab.config import CLIPConfig, get_config  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
    return get_config(recipe["model"]["name"], **recipe["model"]["overrides"])


def model_config(name: str) -> CLIPConfig:
    return demo_config() if name == "demo" else get_config(name)


def open_clip_model(config: CLIPConfig) -> torch.nn.Module:
    """OpenCLIP's ``CLIP`` with the same architecture as ``config`` (ViT towers)."""
    oc = refs.open_clip()
    v, t = config.vision, config.text
    vision_cfg = {
        "image_size": v.image_size,
        "patch_size": v.patch_size,
        "width": v.width,
        "layers": v.layers,
        "head_width": v.width // v.heads,
        "mlp_ratio": v.mlp_ratio,
    }
    text_cfg = {
        "context_length": t.context_length,
        "vocab_size": t.vocab_size,
        "width": t.width,
        "heads": t.heads,
        "layers": t.layers,
        "mlp_ratio": t.mlp_ratio,
    }
    quick = config.text.activation == "quick_gelu"
    return oc.model.CLIP(config.embed_dim, vision_cfg, text_cfg, quick_gelu=quick)


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
    slices: dict[str, tuple[str, Sequence[str]]] | None = None,
) -> dict[str, Any]:
    """Train the demo recipe (or ``recipe``) with ``--set`` style ``settings`` into
    ``output`` (resuming a run cut short) and measure zero-shot top-1 (%) on ``sets`` (names
    under ``data/eval``): ``{"minutes", "steps", <set>: top-1}``. ``slices``: more columns,
    ``{column: (set, class names)}``, each the set's examples of those classes classified
    among them alone."""
    import cliplab
    from cliplab.demo.evaluate import load_sets
    from cliplab.demo.plan import training_config
    from cliplab.encode import FeatureStore
    from cliplab.evaluation.registry import get
    from cliplab.train import Trainer

    config = training_config(recipe, data, output, [*settings, "eval.interval=0"])
    start = time.perf_counter()
    summary = Trainer(config).fit()
    row: dict[str, Any] = {
        "minutes": (time.perf_counter() - start) / 60,
        "steps": summary["step"],
        "samples_per_s": summary.get("last", {}).get("samples_per_s"),
    }
    model, preprocess = cliplab.load(output / "model")
    store = FeatureStore(model, preprocess, batch_size=256, progress=False)
    zeroshot = get("zeroshot")
    slices = slices or {}
    wanted = list(dict.fromkeys([*sets, *(s for s, _ in slices.values())]))
    loaded = {}
    for _, values, _ in load_sets(data, [("zeroshot", {"dataset": s}, None) for s in wanted]):
        loaded[values["dataset"].name] = values["dataset"]
    tasks = [(name, loaded[name]) for name in sets if name in loaded]
    tasks += [(col, loaded[s].only_classes(names, col)) for col, (s, names) in slices.items()]
    for column, dataset in tasks:
        result = zeroshot(store, zeroshot.make_options({}), dataset=dataset)
        row[column] = 100 * result.top1
        row[column + " top5"] = 100 * result.top5
    return row
