"""``cliplab demo`` end to end on small fake sources (the real ones are installed by
``make demo``): builders, in-memory training, the evaluation suite, the report and a model
that ``cliplab classify`` loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cliplab.cli import main
from cliplab.recipes.builders import emoji_styles
from test_builders import (
    CIRCLE,
    _iconify,
    make_emoji,
    make_fashion,
    make_icons,
    make_tuxpaint,
)

#: The Iconify emoji styles the built-in recipes train on.
TRAINING_STYLES = ("noto-v1", "emojione-v1", "emojione-monotone", "fxemoji", "streamline-emojis")

RECIPE = """
[model]
name = "tiny-vit"
activation = "gelu"

[data]
batch_size = 4
in_memory = true

[data.augment]
crop_scale = [0.5, 1.0]

[[data.sources]]
kind = "shards"
set = "emoji-twitter"
weight = 2.0

[[data.sources]]
kind = "shards"
set = "icons"

[optim]
lr = 1e-3
warmup_steps = 1

[train]
steps = 3
threads = 1

[log]
tensorboard = false
progress = false

[[eval.sets]]
protocol = "zeroshot"
dataset = "emoji-google"
"""


def fake_data(tmp_path: Path) -> tuple[Path, Path]:
    """A data directory with small fake sources for every builder the recipe needs, and the
    recipe file."""
    data = tmp_path / "data"
    sources = data / "sources"
    make_emoji(sources, styles=("twitter", "google", "apple"))  # Facebook's left out
    make_tuxpaint(sources)
    make_fashion(sources, train=12, test=40)
    make_icons(sources)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE)
    return data, recipe


def by_hand_zero_shot(model_dir: Path, data: Path) -> float:
    """Zero-shot top-1 on the fake Google set computed the obvious way, without the encode
    layer or the protocol: the known right answer for the demo's headline figure."""
    import torch
    from PIL import Image

    import cliplab

    model, preprocess = cliplab.load(model_dir)
    root = data / "eval" / "emoji-google"
    rows = [json.loads(x) for x in (root / "index.jsonl").read_text().splitlines()]
    classes = json.loads((root / "classes.json").read_text())
    templates = json.loads((root / "templates.json").read_text())["templates"]
    with torch.no_grad():
        images = torch.stack([preprocess(Image.open(root / r["file"])) for r in rows])
        image = torch.nn.functional.normalize(model.encode_image(images), dim=-1)
        weights = []
        for name in classes:
            texts = [t.replace("{}", name) for t in templates]
            tokens = cliplab.tokenize(texts, model.context_length, truncate=True)
            text = torch.nn.functional.normalize(model.encode_text(tokens), dim=-1)
            weights.append(torch.nn.functional.normalize(text.mean(0), dim=-1))
        predicted = (image @ torch.stack(weights).T).argmax(1)
    return float((predicted == torch.tensor([r["label"] for r in rows])).float().mean())


def test_demo_end_to_end_on_fake_sources(tmp_path: Path, capsys) -> None:
    data, recipe = fake_data(tmp_path)
    out = tmp_path / "demo"
    argv = ["demo", "--data", str(data), "--out", str(out), "--recipe", str(recipe)]
    assert main([*argv, "--no-install", "--quiet", "--set", "eval.interval=2"]) == 0
    printed = capsys.readouterr().out
    assert "emoji-google" in printed and "chance" in printed

    summary = json.loads((out / "summary.json").read_text())
    rows = {(r["set"], r["protocol"], r["metric"]): r for r in summary["rows"]}
    google = rows["emoji-google", "zero-shot", "top-1"]
    assert google["chance"] == 1 / 7  # the fake emoji set has 7 concepts
    assert google["value"] == pytest.approx(by_hand_zero_shot(out / "train" / "model", data))
    assert ("fashion-mnist-test", "linear probe", "top-1") in rows
    assert ("fashion-mnist-test", "1-shot probe", "top-1") in rows
    # the optional styles: Apple's sources are installed, so it is evaluated; Facebook's not
    assert rows["emoji-apple", "zero-shot", "top-1"]["test"] == "unseen drawing style"
    assert not any(key[0] == "emoji-facebook" for key in rows)
    assert "eval/emoji-facebook not built (its source is not installed): left out" in printed
    assert summary["meta"]["steps"] == 3
    # held-out data stays out of training: no Google or photo shards, no Fashion-MNIST train
    shards = {p.name for p in (data / "shards").iterdir()}
    assert "emoji-twitter" in shards and not shards & {"fashion-mnist-train", "emoji-google"}

    report = (out / "report.md").read_text()
    assert summary["meta"]["training_data"] == ["emoji-twitter", "icons"]  # the recipe's sources
    assert "trained from scratch for 3 steps" in report and "on emoji-twitter, icons." in report
    for picture in ("train/curves.png", "accuracy.png", "fewshot.png", "predictions.png"):
        assert f"({picture})" in report
        assert (out / picture).stat().st_size > 1000
    # zero-shot accuracy on the Google style was tracked during training (every 2 steps)
    metrics = [json.loads(line) for line in (out / "train" / "metrics.jsonl").open()]
    assert any(r.get("kind") == "eval" and "zeroshot_emoji-google_top1" in r for r in metrics)

    # the trained model classifies images from the command line
    image = next((data / "eval" / "emoji-google").rglob("*.png"))
    model = out / "train" / "model"
    assert (
        main(["classify", str(image), "--model", str(model), "--labels", "cat,dog", "--json"]) == 0
    )
    answer = json.loads(capsys.readouterr().out)
    assert answer[0]["image"] == str(image)
    assert abs(sum(p for _, p in answer[0]["top"]) - 1) < 1e-4

    # its collections are embedded and indexed for search: training pool and held-out sets
    assert f"cliplab serve {out / 'search' / 'all'}" in printed
    from cliplab.evaluation import load_classification, load_retrieval
    from cliplab.search.collection import Collection
    from cliplab.search.query import Searcher

    sizes = {
        n: len(Collection(out / "search" / n))
        for n in ("emoji-twitter", "emoji-google", "tuxpaint-photos")
    }
    assert sizes["emoji-google"] == len(load_classification(data / "eval" / "emoji-google"))
    assert sizes["tuxpaint-photos"] == len(load_retrieval(data / "eval" / "tuxpaint-photos"))
    assert sizes["emoji-twitter"] == 7  # the fake Twitter emoji shards
    searcher = Searcher(out / "search" / "all")
    assert len(searcher.collection) == sum(sizes.values())
    hits = searcher.search_text("a cat face", k=3)
    assert len(hits) == 3 and all(h.path for h in hits)

    # the demo fits the recipe's length to this machine's speed (`--minutes`, default 9)
    from cliplab.demo.plan import training_config
    from cliplab.demo.train import fit_steps

    long = training_config(recipe, data, tmp_path / "fit", ["train.steps=100000"])
    said: list[str] = []
    assert fit_steps(long, 0.01, log=said.append).train.steps == 100  # the floor
    assert "100 of the recipe's 100000 steps fit in 0.01 min" in said[0]
    assert fit_steps(long, 1e6, log=said.append).train.steps == 100000  # it fits already
    assert fit_steps(long, 0.01, ["train.steps=100000"]).train.steps == 100000  # asked for
    assert fit_steps(long, 0).train.steps == 100000  # --minutes 0
    (tmp_path / "fit").mkdir()  # a run to resume keeps the count it started with
    (tmp_path / "fit" / "config.json").write_text(json.dumps({"train": {"steps": 700}}))
    assert fit_steps(long, 0.01, log=said.append).train.steps == 700

    # a re-run reuses the finished training (resume) and the built data
    assert main([*argv, "--no-install", "--quiet"]) == 0

    # the built-in recipe is a plain `cliplab train` config (no demo dialect)
    from cliplab.demo.plan import recipe_path

    # the demo built only what its recipe needs; the built-in recipe also reads the skins
    assert not (data / "shards" / "emoji-twitter-skins").exists()
    assert (
        main(["data", "build", "emoji", "--sources", str(data / "sources"), "--out", str(data)])
        == 0
    )
    # ... five more emoji styles (Iconify sets) and Emoji One, the validation style it tracks
    pytest.importorskip("resvg_py")
    for name in (*TRAINING_STYLES, "emojione"):
        icons = {"grinningface": {"body": CIRCLE}, "cat-face": {"body": CIRCLE}}
        _iconify(data / "sources", name, icons, {})
    built = emoji_styles.build(data / "sources", data, log=lambda _: None)
    assert {o.name for o in built if o.kind == "shards"} >= {f"emoji-{n}" for n in TRAINING_STYLES}
    plain = [
        "train", str(recipe_path()), "--out", str(tmp_path / "plain"),
        "--set", f"data.dir={data}", "--set", "train.steps=2", "--set", "data.batch_size=8",
        "--set", "eval.interval=1", "--set", "log.progress=false",
    ]  # fmt: skip
    assert main(plain) == 0
    metrics = [json.loads(x) for x in (tmp_path / "plain" / "metrics.jsonl").open()]
    assert any("zeroshot_emoji-google_top1" in r for r in metrics if r["kind"] == "eval")

    # the multilingual recipe, by name: captions in five languages, a second caption per
    # image (train.second_caption), zero-shot per language
    multilingual = [*plain, "--out", str(tmp_path / "multi")]
    multilingual[1] = str(recipe_path("multilingual"))
    assert main(multilingual) == 0
    metrics = [json.loads(x) for x in (tmp_path / "multi" / "metrics.jsonl").open()]
    evals = [r for r in metrics if r["kind"] == "eval"]
    for lang in ("ko", "ja", "de", "es"):  # test style and validation style, each language
        assert any(f"zeroshot_emoji-google-{lang}_top1" in r for r in evals), lang
        assert any(f"zeroshot_emoji-emojione-{lang}_top1" in r for r in evals), lang
    for style in ("google", "emojione"):  # English, the bare name, under its own prefix
        assert any(f"zeroshot_emoji-{style}-en_top1" in r for r in evals), style
    with pytest.raises(FileNotFoundError, match="not a bundled one"):
        recipe_path("klingon")


def test_reproduce_on_fake_sources(tmp_path: Path) -> None:
    from cliplab.demo.reproduce import fit_power_law, run_reproduce

    a, b = fit_power_law([1, 10, 100], [0.5, 0.25, 0.125])
    assert abs(a - (-0.30103)) < 1e-5 and abs(10**b - 0.5) < 1e-9

    data, recipe = fake_data(tmp_path)
    # Emoji One, the validation style the few-shot study's group prompts are chosen on
    pytest.importorskip("resvg_py")
    icons = {"grinningface": {"body": CIRCLE}, "cat-face": {"body": CIRCLE}}
    _iconify(data / "sources", "emojione", icons, {})
    out = tmp_path / "reproduce"
    tiny = {"embed_dim": 16, "vision": {"width": 32, "layers": 1, "heads": 1}}
    report = run_reproduce(
        data,
        out,
        tmp_path / "demo",
        recipe=recipe,
        install=False,
        sizes={"xs": tiny, "s": {}},
        fractions=(0.5,),
        group_levels=(("category", 2),),
        progress=False,
        log=lambda m: None,
    )
    text = report.read_text()
    assert "Claims side by side" in text and "Compute scaling" in text
    results = json.loads((out / "results.json").read_text())
    points = results["compute_scaling"]["points"]
    assert [p["name"] for p in points] == ["xs", "s"]
    # "s" is the demo model (3 steps); "xs" trains steps in proportion to its FLOPs per pair
    assert points[1]["steps"] == 3 and points[0]["gflops_per_pair"] < points[1]["gflops_per_pair"]
    ratio = points[0]["gflops_per_pair"] / points[1]["gflops_per_pair"]
    assert points[0]["steps"] == max(1, round(3 * ratio))
    assert all(p["train_gflops"] == p["gflops_per_pair"] * p["steps"] * 4 for p in points)
    assert not (out / "runs" / "s").exists()  # the demo model is not trained twice
    groups = results["group_fewshot"]
    assert [g["field"] for g in groups] == ["category"]
    plain = {"bare", "emoji", "caption-like", "ensemble"}
    assert set(groups[0]["validation_top1"]) == plain | {f"{p} + members" for p in plain}
    assert groups[0]["names_only"]["templates"] in plain
    assert "emoji category groups" in text and "findings agree" in text
    assert [p["fraction"] for p in results["data_scaling"]["points"]] == [0.5, 1.0]
    # prompts: the demo model and one trained on captions that never are the bare label, each
    # set's templates chosen on its validation set (Fashion-MNIST: on one half, measured on
    # the other)
    prompts = [(p["model"], p["dataset"], p["validation"]) for p in results["prompts"]]
    assert prompts == [
        (m, d, v)
        for m in ("demo", "captions-no-bare")
        for d, v in (
            ("emoji-google", "emoji-emojione"),
            ("tuxpaint-photos-emoji", "emoji-emojione"),
            ("fashion-mnist-test (other half)", "fashion-mnist-test (validation half)"),
        )
    ]
    assert all(p["chosen"] in p["validation_top1"] and "chosen" in p["results"]
               for p in results["prompts"])  # fmt: skip
    no_bare = json.loads((out / "runs" / "captions-no-bare" / "config.json").read_text())
    assert {s["caption_fn"] for s in no_bare["data"]["sources"]} == {
        "cliplab.recipes.captions:draw_caption_no_bare_label"
    }
    assert no_bare["train"]["steps"] == 3  # the demo model's steps
    assert "**captions-no-bare model.**" in text and "median over 2 tasks" in text
    assert (out / "prompts-captions-no-bare-fashion-mnist-test--other-half.png").is_file()
    for picture in ("fewshot.png", "compute-scaling.png", "data-scaling.png"):
        assert (out / picture).stat().st_size > 1000
    assert results["training_data"] == ["emoji-twitter", "icons"]
    assert "on emoji-twitter, icons, so" in text and results["date"] in text
    # the report can be rewritten from results.json alone, the same text
    report.unlink()
    assert main(["reproduce", "--out", str(out), "--report-only"]) == 0
    assert report.read_text() == text
    assert main(["reproduce", "--out", str(tmp_path / "none"), "--report-only"]) == 2
    # a second run reuses the trained variants and says so beside its time
    again = run_reproduce(data, out, tmp_path / "demo", recipe=recipe, install=False,
                          sizes={"xs": tiny, "s": {}}, fractions=(0.5,),
                          group_levels=(("category", 2),), progress=False, log=lambda m: None)  # fmt: skip
    reused = ["captions-no-bare", "xs", "data-50pct"]
    assert json.loads((out / "results.json").read_text())["reused_models"] == reused
    assert "reusing the trained models captions-no-bare, xs, data-50pct" in again.read_text()


def test_fit_steps_times_both_phases_of_a_low_resolution_recipe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With CLIPA's low-resolution phase the first steps (the ones timed) are the fast ones:
    the fitted count uses both speeds, weighted by the share of steps each phase takes."""
    from cliplab.demo import train as demo_train
    from train_helpers import tiny_config

    def rate(config) -> float:  # pairs/s: twice as fast at low resolution
        return 2000.0 if config.train.low_res_size else 1000.0

    monkeypatch.setattr(demo_train, "time_steps", rate)
    base = {"steps": 1_000_000, "low_res_until": 0.75}
    full = tiny_config(train=base, data={"batch_size": 10}, output=str(tmp_path / "a"))
    low = tiny_config(
        train=base | {"low_res_size": 16}, data={"batch_size": 10}, output=str(tmp_path / "b")
    )
    fitted_full = demo_train.fit_steps(full, 1.0, log=lambda _: None).train.steps
    fitted_low = demo_train.fit_steps(low, 1.0, log=lambda _: None).train.steps
    assert fitted_full == 5400  # 60 s x 1000 pairs/s x 0.9 / 10
    # 1 / (0.75 / 2000 + 0.25 / 1000) = 1600 pairs/s, not the 2000 of the first steps
    assert fitted_low == 8640


def test_fit_steps_leaves_the_time_after_training_before_a_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``cliplab demo --within 15`` (``make demo``): the training budget is what is left
    before the deadline, less what comes after the timing; never more than --minutes."""
    import time

    from cliplab.demo import train as demo_train
    from train_helpers import tiny_config

    monkeypatch.setattr(demo_train, "time_steps", lambda config: 1000.0)
    config = tiny_config(
        train={"steps": 1_000_000}, data={"batch_size": 10}, output=str(tmp_path / "a")
    )
    said: list[str] = []
    after = demo_train.AFTER_TIMING_MINUTES
    deadline = time.time() + (after + 2.0) * 60  # 2 minutes left for training
    fitted = demo_train.fit_steps(config, 8.5, log=said.append, deadline=deadline)
    assert 10_700 <= fitted.train.steps <= 10_800  # 120 s x 1000 pairs/s x 0.9 / 10
    assert any("min left for training before the deadline" in m for m in said)
    roomy = time.time() + 60 * 60  # an hour left: --minutes is the budget
    assert demo_train.fit_steps(config, 1.0, deadline=roomy).train.steps == 5400
    # past the deadline already: the shortest budget (6 s), not an error
    assert demo_train.fit_steps(config, 8.5, deadline=time.time() - 60).train.steps == 540


def test_training_gflops_counts_a_low_resolution_phase_at_its_size() -> None:
    """The compute-scaling study's FLOPs: a low-resolution phase's steps cost what its
    smaller images cost (fewer patches), weighted by the share of steps it takes."""
    import cliplab
    from cliplab.demo.reproduce import training_gflops

    model = cliplab.create_model("tiny-vit", vision={"image_size": 32, "patch_size": 8})
    full = training_gflops(model)
    low = training_gflops(model, low_res=(16, 1.0))  # 4 patches instead of 16
    assert 0 < low < 0.8 * full
    assert training_gflops(model, low_res=(16, 0.75)) == pytest.approx(0.75 * low + 0.25 * full)
