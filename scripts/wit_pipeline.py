"""The paper's data collection end to end on a local "web": a pool of candidate (URL, caption)
pairs -> ``cliplab data curate`` -> ``cliplab data download`` -> ``cliplab train`` ->
zero-shot accuracy. The figures in docs/wit.md come from this script.

The web: five hosts on 127.0.0.1 (:mod:`cliplab.demo.localweb`) serving the emoji images of
the demo's seven training styles and the OpenClipart drawings (``make data`` builds them),
each image under one caption drawn from its alt-text-like captions. Like the real web, a
share of the pairs has captions that name nothing (file names, "click here") or are not
English, and a share of the URLs is dead (404), cut short, not an image, or on a host that
opts out of AI training (``X-Robots-Tag: noai``) or disallows us in robots.txt.

    python scripts/wit_pipeline.py --out runs/wit --steps 400

Each step is the command a user runs (printed as it runs); the script only keeps the web up
and collects the figures into OUT/figures.json (copied to docs/results/wit/).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from cliplab.demo.localweb import Site, local_web  # noqa: E402

#: The demo recipe's training sets (its seven emoji styles), and the OpenClipart drawings.
STYLES = (
    *(
        source["set"]
        for source in tomllib.loads(
            (ROOT / "src" / "cliplab" / "demo" / "recipe.toml").read_text()
        )["data"]["sources"]
    ),
    "openclipart",
)
JUNK = ("IMG_{n}.JPG", "DSC0{n}", "image", "click here to enlarge", "untitled-{n}", "photo", "")
FOREIGN = ("ein Bild von {c}", "une image de {c}", "una imagen de {c}", "{c}の絵")


def read_set(data: Path, name: str) -> list[tuple[str, bytes, list[str]]]:
    """(key, image bytes, captions) of every sample of a built shard set."""
    out = []
    for shard in sorted((data / "shards" / name).glob("*.tar")):
        members: dict[str, dict[str, bytes]] = {}
        with tarfile.open(shard) as tar:
            for m in tar.getmembers():
                key, _, ext = m.name.partition(".")
                members.setdefault(key, {})[ext] = tar.extractfile(m).read()  # type: ignore[union-attr]
        for key, sample in members.items():
            image = sample.get("png") or sample.get("jpg")
            captions = json.loads(sample["json"]).get("captions", []) if "json" in sample else []
            if image and captions:
                out.append((f"{name}_{key}", image, captions))
    return out


def build_pool(data: Path, seed: int) -> tuple[list[Site], list[dict[str, str]]]:
    rng = random.Random(seed)
    samples = [s for name in STYLES for s in read_set(data, name)]
    images = {key: image for key, image, _ in samples}
    good = [Site(images) for _ in range(3)]
    optout = Site(images, opt_out="noai")
    robots = Site(images, robots="User-agent: cliplab\nDisallow: /\n")
    rows = []
    for n, (key, _, captions) in enumerate(samples):
        caption = rng.choice(captions)
        r = rng.random()
        if r < 0.08:
            caption = rng.choice(JUNK).format(n=1000 + n)
        elif r < 0.12:
            caption = rng.choice(FOREIGN).format(c=caption)
        r = rng.random()
        site = good[n % 3]
        if r < 0.03:
            url = site.url("status", key, 404)
        elif r < 0.04:
            url = site.url("truncated", key)
        elif r < 0.045:
            url = site.url("html", key)
        elif r < 0.06:
            url = optout.url("img", key)
        elif r < 0.07:
            url = robots.url("img", key)
        else:
            url = site.url("img", key)
        rows.append({"url": url, "caption": caption, "source": key.split("_")[0]})
    rng.shuffle(rows)
    return [*good, optout, robots], rows


def run(cmd: list[str]) -> float:
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cliplab", *cmd], check=True)
    return time.perf_counter() - start


TRAIN = """
[model]
name = "tiny-vit"
embed_dim = 96
activation = "gelu"
vision = {{ image_size = 32, patch_size = 8, width = 96, layers = 3, heads = 3 }}
text = {{ width = 96, layers = 2, heads = 3, context_length = 32 }}

[data]
batch_size = 512
in_memory = true

[data.augment]
crop_scale = [0.5, 1.0]
color_jitter = 0.3
grayscale = 0.2
blur = 0.3
invert = 0.1

[[data.sources]]
kind = "webdataset"
urls = {urls}

[optim]
lr = 3e-3
warmup_steps = 50
weight_decay = 0.1
beta2 = 0.98
eps = 1e-6

[train]
loss = "siglip"
steps = {steps}
threads = 2
seed = 0

[checkpoint]
interval = 1000000

[log]
interval = 20
tensorboard = false

[eval]
interval = {steps}

[[eval.sets]]
protocol = "zeroshot"
dataset = "emoji-emojione"

[[eval.sets]]
protocol = "zeroshot"
dataset = "emoji-google"
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("runs/wit"))
    ap.add_argument("--data", type=Path, default=Path("data"))
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    sites, rows = build_pool(args.data, args.seed)
    pool = out / "pool.csv"
    with open(pool, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["url", "caption", "source"])
        w.writeheader()
        w.writerows(rows)
    figures: dict = {"pool": len(rows)}
    with local_web(*sites):
        figures["curate_s"] = run(
            [
                "data",
                "curate",
                str(pool),
                "--out",
                str(out / "curated"),
                "--text-column",
                "caption",
                "--cap",
                "20000",
            ]
        )
        report = json.loads((out / "curated" / "report.json").read_text())
        figures["curate"] = {k: report[k] for k in ("kept", "dropped") if k in report}
        figures["download_s"] = run(
            [
                "data",
                "download",
                str(out / "curated" / "kept.jsonl"),
                "--out",
                str(out / "shards"),
                "--size",
                "64",
                "--respect-robots",
                "--shard-size",
                "2000",
                "--processes",
                "2",
            ]
        )
        summary = json.loads((out / "shards" / "summary.json").read_text())
        figures["download"] = {k: summary[k] for k in ("rows", "successes", "failures")}
        figures["download"]["images_per_s"] = summary["this_run"]["images_per_s"]
    tars = sorted(str(p.resolve()) for p in (out / "shards").glob("shard-*.tar"))
    config = out / "train.toml"
    config.write_text(TRAIN.format(urls=json.dumps(tars), steps=args.steps))
    figures["train_s"] = run(
        [
            "train",
            str(config),
            "--out",
            str(out / "train"),
            "--set",
            f"data.dir={json.dumps(str(args.data))}",
        ]
    )
    lines = [json.loads(x) for x in (out / "train" / "metrics.jsonl").read_text().splitlines()]
    evals = [x for x in lines if x.get("kind") == "eval"]
    figures["zeroshot"] = {k: v for k, v in evals[-1].items() if k not in ("kind", "time")}
    figures["steps"] = args.steps
    (out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    dest = ROOT / "docs" / "results" / "wit"
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / "figures.json", dest / "figures.json")
    shutil.copy(out / "curated" / "report.md", dest / "curation-report.md")
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
