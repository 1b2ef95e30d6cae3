"""Zero-shot beyond English: the multilingual demo recipe's top-1 on the Google emoji style
with class names in Korean, Japanese, German and Spanish beside English, and what OpenAI's
byte-level BPE costs per caption in each language.

    python benchmarks/multilingual.py --data data [--seeds 0,1] [--english-model runs/demo/train/model]

Writes ``benchmarks/results/multilingual.json``.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

from common import ROOT, machine, table, train_and_score, write

import cliplab  # noqa: E402
from cliplab.datasets.builders.emoji import EVAL_LANGUAGES  # noqa: E402
from cliplab.datasets.captions import caption_for  # noqa: E402
from cliplab.demo.train import run_steps  # noqa: E402

SETS = ["emoji-google", *(f"emoji-google-{lang}" for lang in EVAL_LANGUAGES)]


def token_costs(data: Path, sample: int = 400) -> list[dict[str, Any]]:
    """Mean BPE tokens (without SOT/EOT) of a class name and of a caption per language, over
    ``sample`` emoji of the Twitter shards' metadata."""
    from cliplab.data.webdataset import WebDatasetSource
    from cliplab.datasets.builders import shard_urls
    from cliplab.tokenizer import default_tokenizer

    tokenizer = default_tokenizer()
    metas = []
    for raw in WebDatasetSource(shard_urls("emoji-twitter", data), name="emoji").scan():
        metas.append(json.loads(raw.members["json"]))
        if len(metas) == sample:
            break
    rng = random.Random(0)
    rows = []
    for lang in ("en", *EVAL_LANGUAGES):
        names, captions = [], []
        for meta in metas:
            if lang == "en":
                label, text = meta["label"], caption_for(meta, rng)
            else:
                entry = meta["i18n"].get(lang)
                if not entry:
                    continue
                label = entry["label"]
                text = f"{label}: {', '.join(entry['tags'][:3])}"
            names.append(len(tokenizer.encode(label)))
            captions.append(len(tokenizer.encode(text)))
        rows.append(
            {
                "language": lang,
                "tokens_per_name": statistics.mean(names),
                "tokens_per_caption": statistics.mean(captions),
                "names_over_30_tokens": sum(n > 30 for n in names),
            }
        )
    return rows


def zeroshot(model_dir: Path, data: Path) -> dict[str, float]:
    """Top-1 (%) of a trained model on the language sets and on English with the bare name
    (the same prompt as the translated sets) and with the set's own templates."""
    from cliplab.demo.evaluate import load_sets
    from cliplab.encode import FeatureStore
    from cliplab.evaluation.registry import get

    model, preprocess = cliplab.load(model_dir)
    store = FeatureStore(model, preprocess, batch_size=256, progress=False)
    protocol = get("zeroshot")
    out = {}
    runs = load_sets(data, [("zeroshot", {"dataset": s}, None) for s in SETS])
    for _, values, _ in runs:
        name = values["dataset"].name
        if name == "emoji-google":
            bare = protocol(store, protocol.make_options({"templates": "bare"}), **values)
            out["en (bare name)"] = 100 * bare.top1
            out["en (templates)"] = 100 * protocol(store, protocol.make_options({}), **values).top1
        else:
            out[name.rsplit("-", 1)[1]] = (
                100 * protocol(store, protocol.make_options({}), **values).top1
            )
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "data")
    p.add_argument("--seeds", default="0")
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "multilingual")
    p.add_argument("--english-model", type=Path, help="the English demo model, for comparison")
    p.add_argument(
        "--steps",
        type=int,
        help="training steps (default: as many as the English model's run, else the recipe's)",
    )
    args = p.parse_args()
    steps = args.steps
    if steps is None and args.english_model:
        steps = run_steps(args.english_model.parent)
    settings = [f"train.steps={steps}"] if steps else []
    costs = token_costs(args.data)
    print(
        table(costs, ["language", "tokens_per_name", "tokens_per_caption", "names_over_30_tokens"])
    )
    rows = []
    if args.english_model:
        rows.append({"model": "english recipe", **zeroshot(args.english_model, args.data)})
    for seed in (int(s) for s in args.seeds.split(",")):
        output = args.runs / f"seed{seed}"
        train_and_score(
            [*settings, f"train.seed={seed}"], args.data, output, [], recipe="multilingual"
        )
        rows.append({"model": f"multilingual seed {seed}", **zeroshot(output / "model", args.data)})
        print(rows[-1], flush=True)
    columns = ["model", "en (templates)", "en (bare name)", *EVAL_LANGUAGES]
    print(table(rows, columns))
    for row in rows:
        base = row["en (bare name)"]
        row["half_of_english"] = {lang: row[lang] >= base / 2 for lang in EVAL_LANGUAGES}
    payload = {"machine": machine(), "steps": steps, "token_costs": costs, "zeroshot": rows}
    print(f"wrote {write('multilingual.json', payload)}")


if __name__ == "__main__":
    main()
