"""Zero-shot against k-shot linear probes on a task whose class names lie in the training
text (issue 13, part 4, first study): emoji *groups*. The demo's captions name an emoji's
category and subcategory ("cat face - animals & nature", "cat face, animal mammal"), so the
class names are in the training text, and the held-out styles hold many images per group
(enough for 1-16 shots), unlike the one-image-per-concept emoji sets.

- tasks: the 9 emojibase categories ("Component" left out), and the subcategories with at
  least 60 images across the test styles (31 classes), class names as the captions say them;
- validation: the held-out training style (Emoji One; its concepts mapped to groups by
  name) chooses the zero-shot set-up: the prompt templates, and whether a group is scored by
  its name alone or by the best of its name and its members' names (hierarchical label sets,
  as in CHiLS); the class-names-only zero-shot is recorded beside it; test: Google + Apple + Facebook emoji together, where
  the few-shot protocol draws k examples per class (3 draws) and tests on the rest;
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
from cliplab.encode import FeatureStore
from cliplab.evaluation.datasets import load_classification
from cliplab.evaluation.groups import class_info_by_name, regroup, zero_shot_candidates
from cliplab.evaluation.protocols.fewshot import plot_fewshot
from cliplab.evaluation.protocols.zeroshot import choose_zero_shot
from cliplab.evaluation.registry import get
from cliplab.fileio import write_json

TEST = ("emoji-google", "emoji-apple", "emoji-facebook")
VALIDATION = "emoji-emojione"
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
    data = Path(args.data)
    shots = tuple(int(k) for k in args.shots.split(","))
    results: dict = {
        "machine": machine(),
        "tasks": {},
        "command": "python benchmarks/group_fewshot.py",
    }
    curves = {}
    styles = [load_classification(data / "eval" / name) for name in TEST]
    info = class_info_by_name(styles)
    emoji_one = load_classification(data / "eval" / VALIDATION)
    for level in ("category", "subcategory"):
        test = regroup(styles, level, min_images=60, name=f"held-out styles by {level}")
        val = regroup([emoji_one], level, info=info, classes=test.classnames, name="validation")
        print(f"{level}: {test.num_classes} classes, {len(test)} test images, "
              f"{len(val)} validation images", file=sys.stderr)  # fmt: skip
        entry: dict = {
            "classes": test.classnames,
            "test_images": len(test),
            "validation_images": len(val),
            "models": {},
        }
        for model_dir in args.models:
            model, preprocess = cliplab.load(ROOT / model_dir)
            store = FeatureStore(model, preprocess, batch_size=256, progress=False)
            val_setups, test_setups = zero_shot_candidates(val), zero_shot_candidates(test)
            chosen, scores = choose_zero_shot(store, val_setups)
            plain, _ = choose_zero_shot(
                store, {k: v for k, v in val_setups.items() if v.class_members is None}
            )
            options = {"shots": shots, "seeds": 3, "max_iter": 300}
            few = get("fewshot")(store, options, dataset=test_setups[chosen])
            names_only = get("fewshot")(
                store, {**options, "shots": (1,), "seeds": 1}, dataset=test_setups[plain]
            )
            curves[f"{level} / {Path(model_dir).parent.name}"] = few
            entry["models"][model_dir] = {
                "validation_top1_by_setup": scores,
                "templates": chosen,
                "names_only": {"templates": plain, "zero_shot_top1": names_only.zero_shot},
                "zero_shot_top1": few.zero_shot,
                "probe": {k: {"mean": few.mean(k), "std": few.std(k)} for k in shots},
                "matched_shots": few.matched_shots,
                "verdict": few.verdict(),
            }
            print(json.dumps({level: entry["models"][model_dir]}), file=sys.stderr)
        results["tasks"][level] = entry
    write_json(RESULTS / "group-fewshot.json", results)
    plot_fewshot(curves, ROOT / "docs" / "results" / "group-fewshot.png",
                 "zero-shot vs k-shot probes: emoji groups, held-out styles")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
