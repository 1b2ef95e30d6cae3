"""The text tower in length groups against one cut to the batch's longest caption: the
demo recipes' real training step (their data, captions and loader), paired in one process.

Each round times ``--steps`` training steps with the default (up to 4 length groups) and the
same steps with ``length_groups = 1`` on the same batches, alternating, and reports the
median step time of each and their ratio. Both compute the same features and gradients
(``tests/test_models.py``): the ratio is pure speed. Needs the demo's shards (``make data``).

    python benchmarks/bench_text_groups.py --data data

Writes ``benchmarks/results/text-groups.json``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Any

from common import ROOT, machine, table, write

from cliplab.demo.plan import training_config

RECIPES = {
    "English (recipe.toml)": None,
    "multilingual (multilingual.toml)": ROOT / "src" / "cliplab" / "demo" / "multilingual.toml",
}


def paired(recipe: Path | None, data: Path, steps: int, rounds: int) -> dict[str, Any]:
    """Median seconds per step with length groups and with one cut, on the same batches."""
    import tempfile

    from cliplab.train import Trainer

    with tempfile.TemporaryDirectory() as out:
        config = training_config(recipe, data, Path(out), ["eval.interval=0"])
        trainer = Trainer(config)
        batches = iter(trainer.loader)
        fixed = [next(batches) for _ in range(steps)]
        lengths = [float((b.tokens.argmax(-1) + 1).float().mean()) for b in fixed]
        default = trainer.model.text.length_groups
        times: dict[int, list[float]] = {default: [], 1: []}
        for _ in range(rounds):
            for groups in times:
                trainer.model.text.length_groups = groups
                for b in fixed[:2]:  # warm-up after the switch
                    trainer.train_step(b.images, b.tokens, b.second_tokens)
                start = time.perf_counter()
                for b in fixed:
                    trainer.train_step(b.images, b.tokens, b.second_tokens)
                times[groups].append((time.perf_counter() - start) / steps)
    grouped, single = statistics.median(times[default]), statistics.median(times[1])
    return {
        "batch": config.data.batch_size,
        "mean_caption_tokens": statistics.mean(lengths),
        "second_caption": config.train.second_caption or "none",
        "grouped_ms": 1e3 * grouped,
        "one_cut_ms": 1e3 * single,
        "speedup": single / grouped,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "data")
    p.add_argument("--steps", type=int, default=8, help="timed steps per round and mode")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    rows = []
    for name, recipe in RECIPES.items():
        print(f"== {name}", flush=True)
        rows.append({"recipe": name} | paired(recipe, args.data, args.steps, args.rounds))
    print(
        table(
            rows,
            [
                "recipe",
                "mean_caption_tokens",
                "second_caption",
                "grouped_ms",
                "one_cut_ms",
                "speedup",
            ],
        )
    )
    print(f"wrote {write('text-groups.json', {'machine': machine(), 'rows': rows})}")


if __name__ == "__main__":
    main()
