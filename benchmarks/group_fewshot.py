"""Zero-shot against k-shot linear probes on a task whose class names lie in the training
text (issue 13, part 4, first study): emoji *groups*. The demo's captions name an emoji's
category and subcategory ("cat face - animals & nature", "cat face, animal mammal"), so the
class names are in the training text, and the held-out styles hold many images per group
(enough for 1-16 shots), unlike the one-image-per-concept emoji sets.

- tasks: the 9 emojibase categories ("Component" left out), and the subcategories with at
  least 60 images across the test styles (31 classes), class names as the captions say them;
- validation: the held-out training style (Emoji One; its concepts mapped to groups by
  name) chooses the prompt templates; test: Google + Apple + Facebook emoji together, where
  the few-shot protocol draws k examples per class (3 draws) and tests on the rest;
- models: the final recipe's trial models (`benchmarks/recipe_trials.py`, two seeds).

    python benchmarks/group_fewshot.py [--models runs/trials/styles/5-styles-1800-siglip-seed0/model ...]

Results: benchmarks/results/group-fewshot.json and docs/results/group-fewshot.png
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

from common import RESULTS, ROOT, machine

import cliplab
from cliplab.encode import FeatureStore
from cliplab.evaluation.datasets import ClassificationSet, load_classification
from cliplab.evaluation.protocols.fewshot import plot_fewshot
from cliplab.evaluation.registry import get
from cliplab.fileio import write_json

TEST = ("emoji-google", "emoji-apple", "emoji-facebook")
VALIDATION = "emoji-emojione"
#: candidate prompt sets, chosen between on the validation style only
TEMPLATES = {
    "bare": ["{}"],
    "emoji": ["{} emoji"],
    "caption-like": ["an emoji, {}", "emoji - {}", "{} icon"],
    "ensemble": ["{}", "{} emoji", "an emoji, {}", "emoji - {}", "{} icon", "an emoji of {}"],
}
MODELS = [
    "runs/trials/styles/5-styles-1800-siglip-seed0/model",
    "runs/trials/styles/5-styles-1800-siglip-seed1/model",
]


def group_names(meta: dict, level: str) -> str:
    value = meta[level]
    return value.lower() if level == "category" else value.replace("-", " ")


def concept_groups(data: Path) -> dict[str, dict]:
    """Concept name -> its class info (category, subcategory), from the sets that have it."""
    out: dict[str, dict] = {}
    for name in TEST:
        root = data / "eval" / name
        names = json.loads((root / "classes.json").read_text())
        info = json.loads((root / "class_info.json").read_text())
        out.update(dict(zip(names, info)))
    return out


def regroup(ds: ClassificationSet, by_name: dict[str, dict], level: str, keep: set[str]) -> tuple:
    images, labels = [], []
    for image, label in zip(ds.images, ds.labels):
        meta = by_name.get(ds.classnames[label])
        if meta is None or meta["category"] == "Component":
            continue
        group = group_names(meta, level)
        if group in keep:
            images.append(image)
            labels.append(group)
    return images, labels


def task(data: Path, level: str, min_images: int) -> tuple[list[str], ClassificationSet, list]:
    by_name = concept_groups(data)
    counts: Counter[str] = Counter()
    test_parts = []
    for name in TEST:
        ds = load_classification(data / "eval" / name)
        images, labels = regroup(
            ds, by_name, level, {group_names(m, level) for m in by_name.values()}
        )
        counts.update(labels)
        test_parts.append((images, labels))
    classes = sorted(g for g, n in counts.items() if n >= min_images and g != "component")
    keep = set(classes)
    images = [i for part in test_parts for i, lab in zip(*part) if lab in keep]
    labels = [classes.index(lab) for part in test_parts for lab in part[1] if lab in keep]
    test = ClassificationSet(images, labels, classes, name=f"held-out styles by {level}")
    val_ds = load_classification(data / "eval" / VALIDATION)
    v_images, v_labels = regroup(val_ds, by_name, level, keep)
    validation = [(i, classes.index(lab)) for i, lab in zip(v_images, v_labels)]
    return classes, test, validation


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
    for level, min_images in (("category", 60), ("subcategory", 60)):
        classes, test, validation = task(data, level, min_images)
        print(f"{level}: {len(classes)} classes, {len(test)} test images, "
              f"{len(validation)} validation images", file=sys.stderr)  # fmt: skip
        entry: dict = {
            "classes": classes,
            "test_images": len(test),
            "validation_images": len(validation),
            "models": {},
        }
        for model_dir in args.models:
            model, preprocess = cliplab.load(ROOT / model_dir)
            store = FeatureStore(model, preprocess, batch_size=256, progress=False)
            val = ClassificationSet(
                [i for i, _ in validation], [y for _, y in validation], classes, name="validation"
            )
            scores = {}
            for key, templates in TEMPLATES.items():
                r = get("zeroshot")(store, dataset=replace(val, templates=templates))
                scores[key] = r.top1
            chosen = max(scores, key=scores.get)
            dataset = replace(test, templates=TEMPLATES[chosen])
            few = get("fewshot")(
                store, {"shots": shots, "seeds": 3, "max_iter": 300}, dataset=dataset
            )
            curves[f"{level} / {Path(model_dir).parent.name}"] = few
            entry["models"][model_dir] = {
                "validation_top1_by_templates": scores,
                "templates": chosen,
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
