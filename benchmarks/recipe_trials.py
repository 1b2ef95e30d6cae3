"""Recipe trials for the demo, chosen on validation and reported on test, never the reverse.

Each trial is the demo recipe with ``--set`` changes (sources, mix, steps, model shape...),
trained with two seeds. Its *validation* figures are zero-shot top-1 on a training-eligible
emoji style that the trial leaves out of training (``emoji-emojione`` by default: Emoji One's
colour set, 1,102 concepts), which is what recipes are compared on; its *test* figures
(Google, Apple and Facebook emoji, Tux Paint photos, Fashion-MNIST) are measured once per
trial and printed in separate columns, never used to choose.

    python benchmarks/recipe_trials.py --data data --trials styles --seeds 0,1

Writes ``benchmarks/results/trials-<name>.json`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

from common import ROOT, cpu_name, machine, table, train_and_score, write

VALIDATION = ["emoji-emojione"]
TEST = [
    "emoji-google",
    "emoji-apple",
    "emoji-facebook",
    "tuxpaint-photos-emoji",
    "fashion-mnist-test",
]
TWITTER = ["emoji-twitter", "emoji-twitter-skins"]
#: The training-eligible styles besides Twitter, less the validation style.
STYLES = [
    "emoji-noto-v1",
    "emoji-emojione-v1",
    "emoji-emojione-monotone",
    "emoji-fxemoji",
    "emoji-streamline-emojis",
]


def sources(sets: list[str]) -> list[str]:
    """``--set`` values that replace the recipe's sources with these shard sets."""
    tables = ", ".join(f'{{kind = "shards", set = "{s}"}}' for s in sets)
    return [f"data.sources=[{tables}]"]


def trial(
    sets: list[str], steps: int, loss: str = "plain", batch: int = 256, *extra: str
) -> list[str]:
    """``--set`` values of a trial, every setting a trial varies pinned (the recipe moves on:
    re-run, a trial must train what its row was measured on)."""
    pinned = [f"train.steps={steps}", f'train.loss="{loss}"', f"data.batch_size={batch}"]
    return [*sources(sets), *pinned, *extra]


SEVEN = TWITTER + STYLES

#: name -> {trial name: --set values}
TRIALS: dict[str, dict[str, list[str]]] = {
    "styles": {
        "twitter 1500": trial(TWITTER, 1500),  # the recipe of 2026-11-22
        "twitter 1500 siglip": trial(TWITTER, 1500, "siglip"),
        "+5 styles 1500": trial(SEVEN, 1500),
        "+5 styles 3000": trial(SEVEN, 3000),
        # ~9 minutes of training on the slowest machine seen (AMD EPYC, AVX2 only: ~870 pairs/s)
        "+5 styles 1800": trial(SEVEN, 1800),
        "+5 styles 1800 siglip": trial(SEVEN, 1800, "siglip"),
        # more steps in the same minutes (AMD EPYC, time_steps of the recipe: 735 pairs/s;
        # patch dropout 0.5: 930, x1.27; batch 128: 744, twice the steps of batch 256)
        "+5 styles siglip patch-dropout 2300": trial(
            SEVEN, 2300, "siglip", 256, "train.patch_dropout=0.5"
        ),
        "+5 styles siglip batch-128 3600": trial(SEVEN, 3600, "siglip", 128),
        # the text tower in length groups made text passes cheap (session of 2026-12-01,
        # time_steps, 3 paired rounds: recipe 719 pairs/s; a second caption per image
        # contrasted with the image x0.87; patch dropout 0.25 x1.15): equal time to 1,800
        "+5 styles siglip second-image 1570": trial(
            SEVEN, 1570, "siglip", 256, 'train.second_caption="image"'
        ),
        "+5 styles siglip patch-dropout-0.25 2070": trial(
            SEVEN, 2070, "siglip", 256, "train.patch_dropout=0.25"
        ),
        # batch 128 lost 7 points at equal time: the other way, the same pairs in fewer steps
        "+5 styles siglip batch-512 900": trial(SEVEN, 900, "siglip", 512),
        "+5 styles siglip batch-1024 450": trial(SEVEN, 450, "siglip", 1024),
        # the learning rate was tuned at batch 256 (3e-3); at 512 the square-root rule says
        # about 4.2e-3
        "+5 styles siglip batch-512 900 lr-4.5e-3": trial(
            SEVEN, 900, "siglip", 512, "optim.lr=4.5e-3"
        ),
        "+5 styles siglip batch-512 900 lr-2e-3": trial(SEVEN, 900, "siglip", 512, "optim.lr=2e-3"),
        "+5 styles 4000": trial(SEVEN, 4000),
        "+5 styles 4000 patch-dropout": trial(SEVEN, 4000, "plain", 256, "train.patch_dropout=0.5"),
        "+5 styles 4000 siglip": trial(SEVEN, 4000, "siglip"),
    },
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "data")
    p.add_argument("--trials", default="styles", choices=sorted(TRIALS))
    p.add_argument("--only", help="comma-separated trial names of the group")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "trials")
    args = p.parse_args()
    present = [s for s in VALIDATION + TEST if (args.data / "eval" / s).is_dir()]
    missing = [s for s in VALIDATION + TEST if s not in present]
    if missing:
        print(f"not built, left out: {', '.join(missing)} (cliplab data build)")
    rows: list[dict[str, Any]] = []
    trials = TRIALS[args.trials]
    names = args.only.split(",") if args.only else list(trials)
    for name in names:
        for seed in (int(s) for s in args.seeds.split(",")):
            slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
            output = args.runs / args.trials / f"{slug}-seed{seed}"
            print(f"== {name}, seed {seed}", flush=True)
            row = {"trial": name, "seed": seed, "cpu": cpu_name()}
            row |= train_and_score(
                [*trials[name], f"train.seed={seed}"], args.data, output, present
            )
            rows.append(row)
            print(
                "   "
                + ", ".join(
                    f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                ),
                flush=True,
            )
    # earlier invocations' runs of other trials or seeds stay in the table (a run is hours of
    # CPU: trials accumulate across invocations; a re-run replaces its own row)
    done = {(r["trial"], r["seed"]) for r in rows}
    previous = ROOT / "benchmarks" / "results" / f"trials-{args.trials}.json"
    if previous.is_file():
        earlier = json.loads(previous.read_text(encoding="utf-8")).get("runs", [])
        rows = [r for r in earlier if (r["trial"], r["seed"]) not in done] + rows
    names = [n for n in trials if any(r["trial"] == n for r in rows)]
    rows = [r for r in rows if r["trial"] in names]
    rows.sort(key=lambda r: (names.index(r["trial"]), r["seed"]))
    means = []
    for name in names:
        mine = [r for r in rows if r["trial"] == name]
        mean = {"trial": name, "seed": "mean"}
        for s in present:
            values = [r[s] for r in mine if s in r]
            if not values:
                continue
            mean[s] = statistics.mean(values)
            mean[s + " spread"] = max(values) - min(values)
        means.append(mean)
    val = [s for s in VALIDATION if s in present]
    test = [s for s in TEST if s in present]
    print("validation (choose on these):")
    print(table(rows + means, ["trial", "seed", "steps", "minutes", *val]))
    print("test (measured, never chosen on):")
    print(table(rows + means, ["trial", "seed", *test]))
    payload = {"machine": machine(), "validation": val, "test": test, "runs": rows, "means": means}
    print(f"wrote {write(f'trials-{args.trials}.json', payload)}")


if __name__ == "__main__":
    main()
