"""Zero-shot against k-shot linear probes on a task whose class names lie in the training
text (issue 13, part 4, first study): emoji *groups*. The demo's captions name an emoji's
category and subcategory ("cat face - animals & nature", "cat face, animal mammal"), so the
class names are in the training text, and the held-out styles hold many images per group
(enough for 1-16 shots), unlike the one-image-per-concept emoji sets.

- tasks: the 9 emojibase categories ("Component" left out), and the subcategories with at
  least 60 images across the test styles (30 classes), class names as the captions say them;
- validation: the held-out training style (Emoji One; its concepts mapped to groups by
  name) chooses the zero-shot set-up: the prompt templates, and whether a group is scored by
  its name alone or by the best of its name and its members' names (hierarchical label sets,
  as in CHiLS); the class-names-only zero-shot is recorded beside it;
- test: Google + Apple + Facebook emoji together, where the few-shot protocol draws k
  examples per class (3 draws) and tests on the rest;
- the study is the one `make reproduce` runs (``cliplab.demo.reproduce.group_fewshot``);
- models: the final recipe's trial models (`benchmarks/recipe_trials.py`, two seeds).

    python benchmarks/group_fewshot.py [--models runs/trials/styles/5-styles-1800-siglip-seed0/model ...]

Results: benchmarks/results/group-fewshot.json and docs/results/group-fewshot.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from common import RESULTS, ROOT, machine

import cliplab
from cliplab.demo.reproduce import group_fewshot
from cliplab.encode import FeatureStore
from cliplab.evaluation.protocols.fewshot import plot_fewshot
from cliplab.evaluation.registry import result_from_dict
from cliplab.fileio import write_json

LEVELS = (("category", 60), ("subcategory", 60))
MODELS = [
    "runs/trials/styles/5-styles-1800-siglip-seed0/model",
    "runs/trials/styles/5-styles-1800-siglip-seed1/model",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--data", default=str(ROOT / "data"))
    parser.add_argument("--shots", default="1,2,4,8,16")
    args = parser.parse_args()
    shots = tuple(int(k) for k in args.shots.split(","))
    results: dict = {
        "machine": machine(),
        "tasks": {},
        "command": "python benchmarks/group_fewshot.py",
    }
    curves = {}
    for model_dir in args.models:
        model, preprocess = cliplab.load(ROOT / model_dir)
        store = FeatureStore(model, preprocess, batch_size=256, progress=False)
        # the study `make reproduce` runs (cliplab.demo.reproduce.group_fewshot), per model
        log = lambda m: print(m, file=sys.stderr)  # noqa: E731
        for g in group_fewshot(store, Path(args.data) / "eval", LEVELS, log, shots):
            few = result_from_dict(g["result"])
            level = g["field"]
            curves[f"{level} / {Path(model_dir).parent.name}"] = few
            entry = results["tasks"].setdefault(
                level,
                {
                    "classes": g["classes"],
                    "test_images": g["test_images"],
                    "validation_images": g["validation_images"],
                    "models": {},
                },
            )
            entry["models"][model_dir] = {
                "validation_top1_by_setup": g["validation_top1"],
                "templates": g["templates"],
                "names_only": {
                    "templates": g["names_only"]["templates"],
                    "zero_shot_top1": g["names_only"]["zero_shot"],
                },
                "zero_shot_top1": few.zero_shot,
                "probe": {k: {"mean": few.mean(k), "std": few.std(k)} for k in shots},
                "matched_shots": few.matched_shots,
                "verdict": few.verdict(),
            }
            print(json.dumps({level: entry["models"][model_dir]}), file=sys.stderr)
    write_json(RESULTS / "group-fewshot.json", results)
    by_level = sorted(curves, key=lambda k: k.split(" / ")[0])  # categories first, as before
    plot_fewshot({k: curves[k] for k in by_level}, ROOT / "docs" / "results" / "group-fewshot.png",
                 "zero-shot vs k-shot probes: emoji groups, held-out styles")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
