"""Zero-shot beyond English: the multilingual demo recipe's trials, chosen on the validation
style and reported on the test style, and what OpenAI's byte-level BPE costs per caption.

Each trial is the multilingual recipe with ``--set`` changes. Its *validation* figures are
zero-shot top-1 on Emoji One (``emoji-emojione`` and ``emoji-emojione-<lang>``: a style no
recipe trains on) with the class names in English, Korean, Japanese, German and Spanish (the
name alone as prompt); trials are compared by the worst language's share of English there.
Its *test* figures are the same on the Google style (``emoji-google-<lang>``), measured once
per trial, never used to choose.

    python benchmarks/multilingual.py --data data [--trials "26 locales,5 languages second text 960"]
        [--seeds 0,1] [--steps 1300] [--english-model runs/demo/train/model]

Writes ``benchmarks/results/multilingual.json`` (rows of earlier invocations are kept).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import textwrap
from pathlib import Path
from typing import Any

from common import ROOT, machine, table, train_and_score, write

import cliplab  # noqa: E402
from cliplab.demo.train import run_steps  # noqa: E402
from cliplab.recipes.captions import (  # noqa: E402
    EVAL_LANGUAGES,
    MultilingualCaptioner,
    caption_for,
)

STYLES = {"validation": "emoji-emojione", "test": "emoji-google"}
LANGUAGES = ("en", *EVAL_LANGUAGES)
#: The multilingual recipe's shard sets (Emoji One stays out: it is the validation style).
SETS = [
    "emoji-twitter",
    "emoji-twitter-skins",
    "emoji-noto-v1",
    "emoji-emojione-v1",
    "emoji-emojione-monotone",
    "emoji-fxemoji",
    "emoji-streamline-emojis",
]


def caption_sources(fn: str) -> list[str]:
    """``--set`` values that give every source of the recipe the caption function ``fn``
    (``module:function``; a bare name is one of ``cliplab.recipes.captions``)."""
    fn = fn if ":" in fn else f"cliplab.recipes.captions:{fn}"
    tables = ", ".join(f'{{kind = "shards", set = "{s}", caption_fn = "{fn}"}}' for s in SETS)
    return [f"data.sources=[{tables}]"]


def text_context(length: int) -> list[str]:
    """``--set`` for the recipe's model with a text context of ``length`` tokens."""
    return [f"model.text.context_length={length}"]


#: Trial captions: English and each of ``EVAL_LANGUAGES`` a fifth of the time.
draw_caption_uniform = MultilingualCaptioner(EVAL_LANGUAGES, english_share=0.2)


#: trial name -> --set values on the multilingual recipe (each says its captions in full,
#: so the trials stay the same when the recipe changes; the recipe is the last one's)
ONE_CAPTION = ['train.second_caption=""']
FIVE = caption_sources("draw_caption_five_languages")
TRIALS: dict[str, list[str]] = {
    # the first recipe: 40% English, 2.4% each of 25 other locales
    "26 locales": caption_sources("draw_caption_multilingual") + ONE_CAPTION,
    "5 languages": FIVE + ONE_CAPTION,  # 15% each of ko, ja, de, es
    "5 languages context 48": FIVE + ONE_CAPTION + text_context(48),
    "5 languages uniform": caption_sources("multilingual:draw_caption_uniform") + ONE_CAPTION,
    # a second caption per image costs a second text pass: 347 vs 469 pairs/s (time_steps,
    # AMD EPYC), so 960 steps take the time of 1,300
    "5 languages second image 960": FIVE + ['train.second_caption="image"', "train.steps=960"],
    "5 languages second text 960": FIVE + ['train.second_caption="text"', "train.steps=960"],
    # the English recipe moved to batch 512 on validation (at equal pairs): the same here
    "5 languages second text batch-512 480": FIVE
    + ['train.second_caption="text"', "train.steps=480", "data.batch_size=512"],
}


def token_costs(data: Path, sample: int = 400) -> list[dict[str, Any]]:
    """Mean BPE tokens (without SOT/EOT) of a class name and of a caption per language, over
    ``sample`` emoji of the Twitter shards' metadata."""
    from cliplab.data.webdataset import WebDatasetSource
    from cliplab.recipes.builders import shard_urls
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
    """Top-1 (%) of a trained model on each style in each language, the name alone as prompt
    (``"<split> <lang>"``), and on English with the set's own templates."""
    from cliplab.demo.evaluate import load_sets
    from cliplab.encode import FeatureStore
    from cliplab.evaluation.registry import get

    model, preprocess = cliplab.load(model_dir)
    store = FeatureStore(model, preprocess, batch_size=256, progress=False)
    protocol = get("zeroshot")
    out = {}
    for split, style in STYLES.items():
        names = [style, *(f"{style}-{lang}" for lang in EVAL_LANGUAGES)]
        runs = load_sets(data, [("zeroshot", {"dataset": s}, None) for s in names])
        for _, values, _ in runs:
            name = values["dataset"].name
            if name == style:
                bare = protocol(store, protocol.make_options({"templates": "bare"}), **values)
                out[f"{split} en"] = 100 * bare.top1
                full = protocol(store, protocol.make_options({}), **values)
                out[f"{split} en (templates)"] = 100 * full.top1
            else:
                result = protocol(store, protocol.make_options({}), **values)
                out[f"{split} {name.rsplit('-', 1)[1]}"] = 100 * result.top1
        english = out[f"{split} en"]
        out[f"{split} worst share"] = min(out[f"{split} {g}"] for g in EVAL_LANGUAGES) / english
    return out


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Top-1 per language, one group of bars per trial (seeds averaged), validation style on
    the left, test style on the right: the half-of-English line drawn per trial."""
    from cliplab.evaluation.output import pyplot, save_figure

    plt = pyplot()
    trials = list(dict.fromkeys(r["trial"] for r in rows))
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    width = 0.8 / len(LANGUAGES)
    for ax, split in zip(axes, ("validation", "test"), strict=True):
        for j, lang in enumerate(LANGUAGES):
            means = [
                statistics.mean(r[f"{split} {lang}"] for r in rows if r["trial"] == t)
                for t in trials
            ]
            ax.bar([i + (j - 2) * width for i in range(len(trials))], means, width, label=lang)
        for i, t in enumerate(trials):
            half = statistics.mean(r[f"{split} en"] for r in rows if r["trial"] == t) / 2
            ax.hlines(half, i - 0.45, i + 0.45, colors="k", linestyles="dotted")
        ax.set_xticks(range(len(trials)))
        ax.set_xticklabels([textwrap.fill(t, 13) for t in trials], fontsize=7)
        style = STYLES[split].removeprefix("emoji-")
        ax.set_title(f"{split}: {style} style (dotted: half of English)")
    axes[0].set_ylabel("zero-shot top-1 (%), class names in each language")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=ROOT / "data")
    p.add_argument(
        "--trials",
        default="5 languages second text 960",
        help="comma-separated names of TRIALS (default: the recipe at 960 steps)",
    )
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
        rows.append(
            {"trial": "english recipe", "seed": "", **zeroshot(args.english_model, args.data)}
        )
    for name in args.trials.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
            output = args.runs / f"{slug}-seed{seed}"
            print(f"== {name}, seed {seed}", flush=True)
            row = train_and_score(
                [*settings, *TRIALS[name], f"train.seed={seed}"],
                args.data,
                output,
                [],
                recipe="multilingual",
            )
            rows.append(
                {"trial": name, "seed": seed, **row, **zeroshot(output / "model", args.data)}
            )
            print(rows[-1], flush=True)
    for row in rows:
        base = row["test en"]
        row["half_of_english"] = {g: row[f"test {g}"] >= base / 2 for g in EVAL_LANGUAGES}
    previous = ROOT / "benchmarks" / "results" / "multilingual.json"
    if previous.is_file():  # runs of other trials or seeds stay (a re-run replaces its own)
        done = {(r["trial"], r["seed"]) for r in rows}
        earlier = json.loads(previous.read_text(encoding="utf-8")).get("runs", [])
        rows = [r for r in earlier if (r["trial"], r["seed"]) not in done] + rows
    print("validation, Emoji One (choose on these):")
    print(
        table(
            rows,
            [
                "trial",
                "seed",
                "steps",
                *(f"validation {g}" for g in LANGUAGES),
                "validation worst share",
            ],
        )
    )
    print("test, Google (measured, never chosen on):")
    print(table(rows, ["trial", "seed", *(f"test {g}" for g in LANGUAGES), "test worst share"]))
    payload = {"machine": machine(), "steps": steps, "token_costs": costs, "runs": rows}
    print(f"wrote {write('multilingual.json', payload)}")
    trials = [r for r in rows if "validation en" in r and r["trial"] != "english recipe"]
    print(f"wrote {plot(trials, ROOT / 'docs' / 'results' / 'multilingual.png')}")


if __name__ == "__main__":
    main()
