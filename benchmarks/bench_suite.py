"""A whole benchmark suite: ``cliplab eval suite`` against LAION's ``clip_benchmark eval``,
same run, same weights, same sets in CLIP_benchmark's own WebDataset layout.

The sets are built from what ``make data`` installs: the Google emoji style (1911 classes,
its first ``--templates`` prompt templates: a text-heavy zero-shot task), ``--fmnist``
Fashion-MNIST test images (image-heavy) and the Tux Paint photos with their captions as a
retrieval set (named ``flickr30k`` so that clip_benchmark's name-based task choice picks
retrieval). The model is OpenCLIP's ViT-B/32 architecture with random weights (the same
safetensors file for both; throughput does not depend on the weights). cliplab runs with
``--ties topk`` so its numbers are CLIP_benchmark's; the script checks they agree.

Timed: clip_benchmark (its command line, one process for the three sets), cliplab without
a feature cache (a fresh cache directory) and cliplab again with the cache the first run
filled. ::

    python benchmarks/bench_suite.py [--fmnist 1000] [--templates 3]

Writes ``benchmarks/results/suite.json``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import torch
from common import ROOT, machine, refs, write

DATA = ROOT / "data" / "eval"


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def _rows(name: str, limit: int | None = None) -> list[dict]:
    lines = (DATA / name / "index.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:limit]]


def build_sets(root: Path, fmnist: int, templates: int) -> list[str]:
    """CLIP_benchmark-layout copies of the installed sets; returns their names."""
    jobs = [("emoji_google", "emoji-google", None), ("fashion_mnist", "fashion-mnist-test", fmnist)]
    for name, source, limit in jobs:
        folder = root / name / "test"
        folder.mkdir(parents=True)
        with tarfile.open(folder / "0.tar", "w") as tar:
            for i, row in enumerate(_rows(source, limit)):
                _add(tar, f"{i:07d}.png", (DATA / source / row["file"]).read_bytes())
                _add(tar, f"{i:07d}.cls", str(row["label"]).encode())
        (folder / "nshards.txt").write_text("1")
        classes = json.loads((DATA / source / "classes.json").read_text(encoding="utf-8"))
        (root / name / "classnames.txt").write_text("\n".join(classes) + "\n", encoding="utf-8")
        own = json.loads((DATA / source / "templates.json").read_text(encoding="utf-8"))[
            "templates"
        ]
        chosen = [t.replace("{}", "{c}") for t in own[:templates]]
        (root / name / "zeroshot_classification_templates.txt").write_text("\n".join(chosen) + "\n")
    folder = root / "flickr30k" / "test"
    folder.mkdir(parents=True)
    with tarfile.open(folder / "0.tar", "w") as tar:
        for i, row in enumerate(_rows("tuxpaint-photos")):
            _add(tar, f"{i:07d}.png", (DATA / "tuxpaint-photos" / row["file"]).read_bytes())
            _add(tar, f"{i:07d}.txt", "\n".join(row["captions"]).encode())
    (folder / "nshards.txt").write_text("1")
    (root / "flickr30k" / "dataset_type.txt").write_text("retrieval\n")
    return ["emoji_google", "fashion_mnist", "flickr30k"]


def build_model(folder: Path) -> Path:
    """OpenCLIP's ViT-B-32 with random weights, as an OpenCLIP hub folder."""
    from safetensors.torch import save_file

    oc = refs.open_clip()
    torch.manual_seed(0)
    cfg = oc.get_model_config("ViT-B-32")
    model = oc.model.CLIP(**cfg).eval()
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              str(folder / "open_clip_model.safetensors"))  # fmt: skip
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg}))
    return folder


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fmnist", type=int, default=1000, help="Fashion-MNIST images")
    ap.add_argument("--templates", type=int, default=3, help="emoji prompt templates")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--runtimes", nargs="*", default=["onnx-int8"],
                    help="also time cliplab uncached with these --runtime values (their ONNX "
                    "export included: a fresh cache); their numbers differ from float32's")  # fmt: skip
    ap.add_argument("--peer-malloc", action=argparse.BooleanOptionalAction, default=True,
                    help="also time clip_benchmark with glibc's malloc set as cliplab sets "
                    "it (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_): how much of the "
                    "speed-up is that setting")  # fmt: skip
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-suite-"))
    names = build_sets(work / "sets", args.fmnist, args.templates)
    hub = build_model(work / "model")
    suite = "".join(
        f'[[task]]\nname = "{n}"\ndataset = "sets/{n}"\noptions = {{ ties = "topk" }}\n\n'
        for n in names
    )
    (work / "suite.toml").write_text(suite)
    cb_out = work / "cb"
    cb_out.mkdir()
    theirs_cmd = [
        sys.executable, str(ROOT / "benchmarks" / "run_clip_benchmark.py"), "eval",
        "--dataset", *[f"wds/{n}" for n in names], "--dataset_root", str(work / "sets" / "{dataset}"),
        "--model", "ViT-B-32", "--pretrained", str(hub / "open_clip_model.safetensors"),
        "--no_amp", "--batch_size", str(args.batch_size), "--recall_k", "1", "5", "10",
        "--num_workers", "1",  # its default 4 finds no samples in a 1-shard set
        "--output", str(cb_out / "{dataset}.json"),
    ]  # fmt: skip
    ours_cmd = [
        sys.executable, "-m", "cliplab", "eval", "suite", "--model", str(hub),
        "--suite", str(work / "suite.toml"), "--batch-size", str(args.batch_size), "--quiet",
        "--cache-dir", str(work / "cache"),
    ]  # fmt: skip
    seconds = {}
    seconds["clip_benchmark"] = timed(theirs_cmd, work)
    print(f"clip_benchmark eval: {seconds['clip_benchmark']:.1f} s", flush=True)
    if args.peer_malloc:
        from cliplab.runtime import MALLOC_LIMIT

        limit = str(MALLOC_LIMIT)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": limit, "MALLOC_TRIM_THRESHOLD_": limit}
        start = time.perf_counter()
        subprocess.run(theirs_cmd, cwd=work, check=True, stdout=subprocess.DEVNULL, env=env)
        peer = seconds["clip_benchmark, malloc as cliplab's"] = time.perf_counter() - start
        print(f"clip_benchmark eval, malloc as cliplab's: {peer:.1f} s", flush=True)
    seconds["cliplab (uncached)"] = timed([*ours_cmd, "--out", str(work / "ours1")], work)
    print(f"cliplab eval suite, no cache: {seconds['cliplab (uncached)']:.1f} s", flush=True)
    seconds["cliplab (cached)"] = timed([*ours_cmd, "--out", str(work / "ours2")], work)
    print(f"cliplab eval suite, cached: {seconds['cliplab (cached)']:.1f} s", flush=True)
    differences = {}
    for runtime in args.runtimes:
        key = f"cliplab --runtime {runtime} (uncached)"
        env = {**os.environ, "CLIPLAB_CACHE": str(work / f"cache-{runtime}")}
        cmd = [*ours_cmd[:-1], str(work / f"cache-{runtime}" / "eval"), "--runtime", runtime]
        start = time.perf_counter()
        subprocess.run([*cmd, "--out", str(work / runtime)], cwd=work, check=True,
                       stdout=subprocess.DEVNULL, env=env)  # fmt: skip
        seconds[key] = time.perf_counter() - start
        print(f"{key}: {seconds[key]:.1f} s", flush=True)
        fast = {
            r["dataset"]: r["metrics"]
            for r in json.loads((work / runtime / "results.json").read_text())
        }
        exact = {
            r["dataset"]: r["metrics"]
            for r in json.loads((work / "ours1" / "results.json").read_text())
        }
        differences[runtime] = max(
            abs(fast[d][k] - v)
            for d, m in exact.items()
            for k, v in m.items()
            if isinstance(v, (int, float))
        )
    ours = json.loads((work / "ours1" / "results.json").read_text())
    agree = {}
    for record in ours:
        theirs = json.loads((cb_out / f"{record['dataset']}.json").read_text())["metrics"]
        agree[record["dataset"]] = {
            k: {"cliplab": v, "clip_benchmark": theirs.get(k)}
            for k, v in record["metrics"].items()
            if k in theirs
        }
    worst = max(abs(v["cliplab"] - v["clip_benchmark"]) for d in agree.values() for v in d.values())
    ratios = {
        "uncached": seconds["clip_benchmark"] / seconds["cliplab (uncached)"],
        "cached": seconds["clip_benchmark"] / seconds["cliplab (cached)"],
        **{f"uncached, --runtime {r}": seconds["clip_benchmark"]
           / seconds[f"cliplab --runtime {r} (uncached)"] for r in args.runtimes},
    }  # fmt: skip
    if args.peer_malloc:
        ratios["uncached, against clip_benchmark with cliplab's malloc setting"] = (
            seconds["clip_benchmark, malloc as cliplab's"] / seconds["cliplab (uncached)"]
        )
    print(f"speed-up: {ratios['uncached']:.2f}x uncached, {ratios['cached']:.1f}x cached; "
          f"largest metric difference {worst:.2e}")  # fmt: skip
    write("suite.json", {
        "machine": machine(),
        "command": "python benchmarks/bench_suite.py " + " ".join(sys.argv[1:]),
        "model": "OpenCLIP ViT-B-32 architecture, random weights (seed 0), float32",
        "sets": {"emoji_google": f"1911 images, 1911 classes x {args.templates} templates",
                 "fashion_mnist": f"{args.fmnist} images, 10 classes",
                 "flickr30k": "Tux Paint photos: 314 images, 314 captions (retrieval)"},
        "seconds": seconds,
        "speedup": ratios,
        "largest_metric_difference": worst,
        "runtime_metric_difference_vs_float32": differences,
        "metrics": agree,
    })  # fmt: skip


if __name__ == "__main__":
    main()
