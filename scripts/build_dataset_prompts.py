"""Build ``src/cliplab/assets/datasets.json``: the class names and prompt templates the CLIP
paper used for its zero-shot table, from OpenAI's own files (MIT licence, see
``src/cliplab/assets/LICENSE-openai-clip.txt``):

- ``data/prompts.md`` of github.com/openai/CLIP: 26 datasets (classes, templates);
- ``notebooks/Prompt_Engineering_for_ImageNet.ipynb``: ImageNet's curated 1000 names and
  its 80 templates.

Names follow CLIP_benchmark's dataset names (``cifar10``, ``imagenet1k``, ``fgvc_aircraft``...)
with the paper's names as aliases. Run from a checkout of openai/CLIP::

    python scripts/build_dataset_prompts.py /path/to/openai/CLIP [COMMIT]
"""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

#: paper's section name -> (cliplab / CLIP_benchmark name, aliases)
NAMES = {
    "Birdsnap": ("birdsnap", []),
    "CIFAR10": ("cifar10", ["cifar-10"]),
    "CIFAR100": ("cifar100", ["cifar-100"]),
    "CLEVRCounts": ("clevr_count_all", ["clevrcounts", "clevr-counts"]),
    "Caltech101": ("caltech101", ["caltech-101"]),
    "Country211": ("country211", []),
    "DescribableTextures": ("dtd", ["describabletextures"]),
    "EuroSAT": ("eurosat", []),
    "FGVCAircraft": ("fgvc_aircraft", ["fgvcaircraft", "aircraft"]),
    "FacialEmotionRecognition2013": ("fer2013", ["facialemotionrecognition2013"]),
    "Flowers102": ("flowers", ["flowers102", "oxford_flowers102"]),
    "Food101": ("food101", ["food-101"]),
    "GTSRB": ("gtsrb", []),
    "HatefulMemes": ("hateful_memes", ["hatefulmemes"]),
    "KITTI": ("kitti_closest_vehicle_distance", ["kitti"]),
    "Kinetics700": ("kinetics700", []),
    "MNIST": ("mnist", []),
    "OxfordPets": ("pets", ["oxfordpets", "oxford_pets", "oxford-iiit-pet"]),
    "PascalVOC2007": ("voc2007", ["pascalvoc2007"]),
    "PatchCamelyon": ("pcam", ["patchcamelyon"]),
    "RESISC45": ("resisc45", []),
    "SST2": ("renderedsst2", ["sst2", "rendered-sst2"]),
    "STL10": ("stl10", ["stl-10"]),
    "SUN397": ("sun397", []),
    "StanfordCars": ("cars", ["stanfordcars", "stanford_cars"]),
    "UCF101": ("ucf101", []),
}
IMAGENET_ALIASES = ["imagenet", "imagenet-1k", "ilsvrc2012", "imagenetv2", "imagenet_sketch",
                    "imagenet-v2", "imagenet-sketch"]  # fmt: skip


def _list(body: str, name: str) -> list:
    m = re.search(rf"{name} = (\[.*?\])\n", body, re.S)
    if not m:
        raise ValueError(f"no {name} list")
    return ast.literal_eval(m.group(1))


def main() -> None:
    repo = Path(sys.argv[1])
    commit = sys.argv[2] if len(sys.argv) > 2 else "unknown"
    datasets = {}
    text = (repo / "data" / "prompts.md").read_text(encoding="utf-8")
    for section in re.split(r"^## ", text, flags=re.M)[1:]:
        title = section.split("\n", 1)[0].strip()
        name, aliases = NAMES[title]
        classes, templates = _list(section, "classes"), _list(section, "templates")
        entry = {"title": title, "aliases": aliases, "templates": templates}
        if any(isinstance(c, list) for c in classes):  # FER2013: several names for a class
            entry["classnames"] = [c[0] if isinstance(c, list) else c for c in classes]
            entry["members"] = [c[1:] if isinstance(c, list) else [] for c in classes]
        else:
            entry["classnames"] = classes
        datasets[name] = entry
    notebook = json.loads(
        (repo / "notebooks" / "Prompt_Engineering_for_ImageNet.ipynb").read_text(encoding="utf-8")
    )
    cells = ["".join(c["source"]) for c in notebook["cells"]]
    classes = next(
        _list(c + "\n", "imagenet_classes") for c in cells if "imagenet_classes = [" in c
    )
    templates = next(
        _list(c + "\n", "imagenet_templates") for c in cells if "imagenet_templates = [" in c
    )
    datasets["imagenet1k"] = {"title": "ImageNet", "aliases": IMAGENET_ALIASES,
                              "classnames": classes, "templates": templates}  # fmt: skip
    assert len(classes) == 1000 and len(templates) == 80
    out = Path(__file__).resolve().parents[1] / "src" / "cliplab" / "assets" / "datasets.json"
    out.write_text(
        json.dumps(
            {
                "source": f"github.com/openai/CLIP @ {commit}: data/prompts.md and "
                "notebooks/Prompt_Engineering_for_ImageNet.ipynb",
                "license": "MIT, Copyright (c) 2021 OpenAI (LICENSE-openai-clip.txt)",
                "datasets": dict(sorted(datasets.items())),
            },
            ensure_ascii=False,
            indent=1,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"wrote {len(datasets)} datasets to {out}")


if __name__ == "__main__":
    main()
