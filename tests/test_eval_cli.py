"""``cliplab eval ...`` and ``cliplab classify`` end to end through ``main(argv)``, on tiny
evaluation sets written in the on-disk format (``cliplab.data.evalsets``)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

import cliplab
from cliplab.cli import main
from cliplab.data.evalsets import write_classification_set, write_retrieval_set

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
FAST = ["--quiet", "--max-iter", "50"]


def shape(color: str, style: str, rng: random.Random) -> Image.Image:
    image = Image.new("RGB", (36, 36), (255, 255, 255) if style == "circle" else (30, 30, 30))
    draw = ImageDraw.Draw(image)
    x = rng.randint(2, 10)
    box = [x, x, x + 22, x + 22]
    (draw.ellipse if style == "circle" else draw.rectangle)(box, fill=COLORS[color])
    return image


@pytest.fixture(scope="module")
def sets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evalsets")
    names = list(COLORS)
    out = {}
    for set_name, style, seed in [
        ("circles", "circle", 0),
        ("circles-test", "circle", 1),
        ("squares", "square", 2),
    ]:
        rng = random.Random(seed)
        items = [(shape(c, style, rng), i) for i, c in enumerate(names) for _ in range(4)]
        write_classification_set(
            root / set_name, items, name=set_name, classnames=names, templates=["a {} shape."]
        )
        out[set_name] = root / set_name
    rng = random.Random(4)
    write_classification_set(
        root / "one-each",
        [(shape(c, "circle", rng), i) for i, c in enumerate(names)],
        name="one-each",
        classnames=names,
        templates=["a {} shape."],
    )
    out["one-each"] = root / "one-each"
    rng = random.Random(3)
    write_retrieval_set(
        root / "captions",
        [(shape(c, "circle", rng), [f"a {c} circle", f"something {c}"]) for c in names],
        name="captions",
    )
    out["captions"] = root / "captions"
    return out


def common(tmp_path: Path, model: str = "random:tiny-vit") -> list[str]:
    return [
        "--model",
        model,
        "--out",
        str(tmp_path / "out"),
        "--cache-dir",
        str(tmp_path / "cache"),
    ]


def read(tmp_path: Path, name: str) -> dict:
    return json.loads((tmp_path / "out" / name).read_text())


def test_zeroshot(sets, tmp_path, capsys) -> None:
    assert (
        main(["eval", "zeroshot", *common(tmp_path), "--dataset", str(sets["circles"]), "--quiet"])
        == 0
    )
    r = read(tmp_path, "zeroshot-circles.json")
    assert r["n"] == 12 and r["num_classes"] == 3 and r["chance"] == pytest.approx(1 / 3)
    assert set(r["per_class"]) == set(COLORS)
    # the figures are the confusion matrix's: top-1 is its diagonal over the images
    confusion = r["confusion"]
    assert sum(map(sum, confusion)) == 12
    assert r["top1"] == pytest.approx(sum(confusion[i][i] for i in range(3)) / 12)
    assert (
        (tmp_path / "out" / "zeroshot-circles.md").read_text().startswith("### Zero-shot: circles")
    )
    assert (tmp_path / "out" / "zeroshot-circles-confusion.png").stat().st_size > 1000
    assert "zero-shot circles: top-1" in capsys.readouterr().out
    # A second run reads features and classifier from the cache and agrees.
    cached = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 2
    assert (
        main(
            [
                "eval",
                "zeroshot",
                *common(tmp_path),
                "--dataset",
                str(sets["circles"]),
                "--quiet",
                "--templates",
                "photo",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 3  # one more classifier


def test_linear_probe_with_and_without_training_set(sets, tmp_path) -> None:
    args = ["eval", "linear-probe", *common(tmp_path), *FAST]
    assert (
        main([*args, "--dataset", str(sets["circles-test"]), "--train", str(sets["circles"])]) == 0
    )
    r = read(tmp_path, "linear-probe-circles-test.json")
    assert r["n_train"] == 12 and r["metrics"]["n"] == 12 and len(r["search"]) >= 7
    assert main([*args, "--dataset", str(sets["squares"]), "--C", "1"]) == 0
    r = read(tmp_path, "linear-probe-squares.json")
    assert "split per class" in r["setup"] and r["metrics"]["n"] == 6


def test_fewshot(sets, tmp_path) -> None:
    argv = ["eval", "fewshot", *common(tmp_path), *FAST, "--dataset", str(sets["circles-test"])]
    argv += ["--train", str(sets["circles"]), "--shots", "1,2", "--seeds", "2", "--C", "1"]
    assert main(argv) == 0
    r = read(tmp_path, "fewshot-circles-test.json")
    assert r["shots"] == [1, 2] and len(r["curve"]["2"]["runs"]) == 2
    assert r["curve"]["1"]["runs"][0]["n_train"] == 3
    assert (tmp_path / "out" / "fewshot-circles-test-fewshot.png").exists()


def test_knn(sets, tmp_path, capsys) -> None:
    """The protocol added as the docs' example works through the CLI like the others."""
    argv = ["eval", "knn", *common(tmp_path), "--quiet", "--dataset", str(sets["circles-test"])]
    assert main([*argv, "--train", str(sets["circles"]), "--k", "3"]) == 0
    r = read(tmp_path, "knn-circles-test.json")
    assert r["k"] == 3 and r["n_train"] == 12 and r["n_test"] == 12
    assert "3-NN circles-test: top-1" in capsys.readouterr().out
    assert main([*argv, "--k", "0"]) == 2


def test_knn_votes_known_answer() -> None:
    import torch

    from cliplab.evaluation.protocols.knn import knn_votes

    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = torch.tensor([0, 0, 1, 1])
    test_x = torch.tensor([[1.0, 0.05], [0.2, 1.0]])
    votes = knn_votes(train_x, train_y, test_x, num_classes=3, k=2, temperature=1.0)
    assert votes.argmax(1).tolist() == [0, 1]
    assert votes[:, 2].tolist() == [0.0, 0.0]  # no neighbour of class 2
    # with k = 4 every training image votes, weighted by exp(cosine)
    cos = (
        torch.nn.functional.normalize(test_x, dim=1)
        @ torch.nn.functional.normalize(train_x, dim=1).t()
    )
    full = knn_votes(train_x, train_y, test_x, num_classes=2, k=4, temperature=1.0)
    torch.testing.assert_close(full[:, 0], cos[:, :2].exp().sum(1))


def test_retrieval(sets, tmp_path) -> None:
    assert (
        main(
            ["eval", "retrieval", *common(tmp_path), "--quiet", "--dataset", str(sets["captions"])]
        )
        == 0
    )
    r = read(tmp_path, "retrieval-captions.json")
    assert r["n_images"] == 3 and r["n_texts"] == 6
    # R@10 with 6 captions and R@5 with 3 images hold everything: only a model with ties
    # (none here) could miss; R@1 is between, and the mean is their average
    assert r["recall"]["image_to_text_R@10"] == 1.0 and r["recall"]["text_to_image_R@5"] == 1.0
    assert r["mean_recall"] == pytest.approx(sum(r["recall"].values()) / 6)


def test_prompts(sets, tmp_path) -> None:
    argv = [
        "eval",
        "prompts",
        *common(tmp_path),
        "--quiet",
        "--dataset",
        str(sets["circles"]),
        "--ensemble",
        "imagenet7",
    ]
    assert main(argv) == 0
    r = read(tmp_path, "prompts-circles.json")
    assert list(r["results"]) == ["bare", "photo", "dataset", "ensemble"]
    assert r["gain_points"]["bare"] == 0.0 and r["chosen"] == ""
    # prompt engineering on a held-out set: every candidate scored there, the best reported
    assert main([*argv, "--validation", str(sets["squares"])]) == 0
    r = read(tmp_path, "prompts-circles.json")
    assert r["validation"] == "squares" and r["chosen"] in r["validation_top1"]
    assert list(r["results"]) == ["bare", "photo", "dataset", "ensemble", "chosen"]
    assert {"bare", "photo", "dataset", "ensemble"} < set(r["validation_top1"])


def test_robustness(sets, tmp_path) -> None:
    # One image per class in the source: C is chosen on half of the in-distribution set.
    argv = ["eval", "robustness", *common(tmp_path), *FAST, "--source", str(sets["one-each"])]
    argv += ["--source-test", str(sets["circles-test"]), "--shifted", str(sets["squares"])]
    assert main(argv) == 0
    r = read(tmp_path, "robustness-one-each.json")
    assert r["in_distribution"] == "circles-test (held out)" and r["shifted"] == ["squares"]
    assert r["sets"]["circles-test (held out)"]["n"] == 6 and "one image per class" in r["setup"]
    assert {"zero-shot", "linear probe", "probe, C x 0.01"} <= set(r["accuracy"])
    assert "shift average" in r["effective_robustness"]["zero-shot"]
    assert (tmp_path / "out" / "robustness-one-each-robustness.png").exists()


def test_report_over_two_models(sets, tmp_path) -> None:
    cliplab.save(cliplab.create_model("tiny-vit"), tmp_path / "model")
    argv = ["eval", "report", *common(tmp_path), *FAST, "--C", "1"]
    argv[argv.index("--model") + 1 : argv.index("--model") + 2] = [
        "random:tiny-vit",
        str(tmp_path / "model"),
    ]
    argv += ["--zeroshot", str(sets["circles"]), "--prompts", str(sets["squares"])]
    argv += ["--ensemble", "imagenet7"]
    argv += [
        "--fewshot",
        f"{sets['circles-test']}:{sets['circles']}",
        "--shots",
        "1,2",
        "--seeds",
        "1",
    ]
    argv += ["--retrieval", str(sets["captions"])]
    argv += ["--robustness", f"{sets['circles']}@{sets['circles-test']}:{sets['squares']}"]
    argv += ["--knn", f"{sets['circles-test']}:{sets['circles']}", "--k", "3"]
    assert main(argv) == 0
    md = (tmp_path / "out" / "report.md").read_text()
    from cliplab.evaluation.registry import PROTOCOLS

    headings = [f"## {p.title}" for name, p in PROTOCOLS.items() if name != "linear-probe"]
    positions = [md.index(h) for h in headings]  # every protocol used, in registry order
    assert positions == sorted(positions)
    runs = json.loads((tmp_path / "out" / "report.json").read_text())
    assert [len(run["results"]) for run in runs] == [6, 6]
    studies = [r for run in runs for r in run["results"] if r["protocol"] == "robustness"]
    assert all(s["baseline_pooled_over"] == 2 for s in studies)
    assert (tmp_path / "out" / "fewshot-circles-test.png").exists()


def test_classify(tmp_path, capsys) -> None:
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    argv = [
        "classify",
        str(image),
        str(image),
        "--labels",
        "cat, dog,car",
        "--model",
        "random:tiny-vit",
        "--top",
        "2",
        "--json",
    ]
    assert main(argv) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and len(rows[0]["top"]) == 2
    assert rows[0] == rows[1]
    assert {label for label, _ in rows[0]["top"]} <= {"cat", "dog", "car"}
    assert main(["classify", str(image), "--labels", "cat", "--model", "random:tiny-vit"]) == 0
    assert "100.00%" in capsys.readouterr().out  # one label takes all the probability


def test_classify_labels_with_members(tmp_path, capsys) -> None:
    from cliplab.zeroshot import parse_labels

    assert parse_labels(" cat, dog ,") == (["cat", "dog"], None)
    assert parse_labels("animal=cat| dog,vehicle=car,rock") == (
        ["animal", "vehicle", "rock"],
        [["cat", "dog"], ["car"], []],
    )
    image = tmp_path / "red.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(image)
    base = ["classify", str(image), "--model", "random:tiny-vit", "--json", "--labels"]
    assert main([*base, "animal=cat|dog|horse,vehicle=car|bus"]) == 0
    top = json.loads(capsys.readouterr().out)[0]["top"]
    assert sorted(label for label, _ in top) == ["animal", "vehicle"]
    assert abs(sum(p for _, p in top) - 1) < 1e-5
    assert main([*base, "=cat|dog,vehicle"]) == 2  # members without a name
    assert "without a label name" in capsys.readouterr().err


def test_bad_input_exits_2(sets, tmp_path, capsys) -> None:
    image = tmp_path / "x.png"
    Image.new("RGB", (8, 8)).save(image)
    assert main(["classify", str(image), "--labels", "a,a", "--model", "random:tiny-vit"]) == 2
    assert (
        main(
            ["classify", str(tmp_path / "nope.png"), "--labels", "a", "--model", "random:tiny-vit"]
        )
        == 2
    )
    assert main(["eval", "zeroshot", *common(tmp_path), "--dataset", str(tmp_path / "nope")]) == 2
    assert main(["eval", "retrieval", *common(tmp_path), "--dataset", str(sets["circles"])]) == 2
    assert "error" in capsys.readouterr().err
    bad_options = [
        ["eval", "fewshot", *common(tmp_path), "--dataset", str(sets["circles"]), "--seeds", "0"],
        ["eval", "linear-probe", *common(tmp_path), "--dataset", str(sets["circles"]), "--C", "-1"],
        ["eval", "report", *common(tmp_path)],  # nothing to evaluate
        ["eval", "report", *common(tmp_path), "--robustness", str(sets["circles"])],  # no shift
        [
            "eval",
            "zeroshot",
            *common(tmp_path),
            "--dataset",
            str(sets["circles"]),
            "--set",
            "x.y=1",
        ],
    ]
    for argv in bad_options:
        assert main(argv) == 2, argv
    # a model setting reaches cliplab.load: --set activation=gelu on an OpenCLIP-GELU-like model
    argv = ["eval", "zeroshot", *common(tmp_path), "--dataset", str(sets["circles"]), "--quiet"]
    assert main([*argv, "--set", "activation=gelu"]) == 0
    assert main([*argv, "--set", "vision.heads=3"]) == 2  # 64 is not divisible by 3


def test_eval_subcommands_and_flags_come_from_the_registry() -> None:
    from cliplab.cli import build_parser
    from cliplab.evaluation.registry import PROTOCOLS

    parser = build_parser()
    eval_parser = parser._subparsers._group_actions[0].choices["eval"]
    commands = eval_parser._subparsers._group_actions[0].choices
    assert set(commands) == {*PROTOCOLS, "report", "suite"}
    for name, protocol in PROTOCOLS.items():
        flags = {s for a in commands[name]._actions for s in a.option_strings}
        for i in protocol.inputs:
            assert "--" + i.name.replace("_", "-") in flags
        for f in protocol.option_fields():
            assert "--" + f.name.replace("_", "-") in flags
        assert {"--model", "--set", "--device", "--out"} <= flags


def bad_image_files(tmp_path: Path) -> dict[str, Path]:
    """A truncated PNG, a text file named .png, and a decompression bomb (a PNG header that
    claims 50,000 x 50,000 pixels)."""
    import struct
    import zlib

    good = tmp_path / "good.png"
    Image.new("RGB", (40, 40), (200, 10, 10)).save(good)
    truncated = tmp_path / "broken.png"
    truncated.write_bytes(good.read_bytes()[:60])
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    bomb = tmp_path / "bomb.png"
    ihdr = chunk(b"IHDR", struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0))
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + ihdr + chunk(b"IEND", b""))
    return {"good": good, "truncated": truncated, "text": text, "bomb": bomb}


def test_classify_reports_bad_files_and_classifies_the_rest(tmp_path, capsys) -> None:
    files = bad_image_files(tmp_path)
    second = tmp_path / "b.png"
    Image.new("RGB", (40, 40), (10, 10, 200)).save(second)
    argv = ["classify", str(files["good"]), str(files["truncated"]), str(second)]
    argv += [str(files["text"]), str(files["bomb"]), str(tmp_path / "missing.png")]
    argv += ["--labels", "red,blue", "--model", "random:tiny-vit", "--json"]
    assert main(argv) == 1  # some failed
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    assert [r["image"] for r in rows if "top" in r] == [str(files["good"]), str(second)]
    errors = {Path(r["image"]).name: r["error"] for r in rows if "error" in r}
    assert errors == {
        "broken.png": "truncated-image",
        "notes.png": "not-an-image",
        "bomb.png": "decompression-bomb",
        "missing.png": "missing-file",
    }
    assert "Traceback" not in captured.err and "broken.png: truncated-image" in captured.err
    only_bad = ["classify", str(files["bomb"]), "--labels", "a", "--model", "random:tiny-vit"]
    assert main(only_bad) == 2


def test_eval_reports_bad_images_and_measures_the_rest(sets, tmp_path, capsys) -> None:
    import shutil

    from cliplab.evaluation import load_classification

    copy = tmp_path / "circles-damaged"
    shutil.copytree(sets["circles"], copy)
    images = sorted((copy / "images").iterdir())
    images[0].write_bytes(images[0].read_bytes()[:50])  # truncated
    images[5].write_text("no")  # not an image
    argv = ["eval", "zeroshot", *common(tmp_path), "--dataset", str(copy), "--quiet"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert f"{images[0]}: truncated-image" in err and f"{images[5]}: not-an-image" in err
    r = read(tmp_path, "zeroshot-circles.json")
    assert r["n"] == 10  # 12 images, 2 unreadable
    # the same figure as on a set without those two images
    full = load_classification(copy)
    keep = [i for i in range(12) if i not in (0, 5)]
    from cliplab.encode import FeatureStore
    from cliplab.evaluation.registry import get

    model, preprocess = cliplab.load("random:tiny-vit")
    expected = get("zeroshot")(
        FeatureStore(model, preprocess, progress=False), dataset=full.subset(keep)
    )
    assert r["top1"] == expected.top1


def test_eval_zeroshot_reads_class_members(sets, tmp_path, capsys) -> None:
    import shutil
    from dataclasses import replace

    from cliplab.encode import FeatureStore
    from cliplab.evaluation import load_classification
    from cliplab.evaluation.registry import get

    copy = tmp_path / "circles-members"
    shutil.copytree(sets["circles"], copy)
    plain = load_classification(copy)
    assert plain.class_members is None
    members = [[f"{c} disc", f"{c} ring"] for c in plain.classnames]
    (copy / "class_members.json").write_text(json.dumps(members))
    argv = ["eval", "zeroshot", *common(tmp_path), "--dataset", str(copy), "--quiet"]
    assert main(argv) == 0
    got = read(tmp_path, "zeroshot-circles.json")
    # the same figures as the library with the members given by hand, not those without
    model, preprocess = cliplab.load("random:tiny-vit")
    store = FeatureStore(model, preprocess, progress=False)
    with_members = get("zeroshot")(store, dataset=replace(plain, class_members=members))
    assert got["members"] == 6 and with_members.members == 6
    assert got["top1"] == pytest.approx(with_members.top1)
    assert got["per_class"] == pytest.approx(with_members.per_class)
    assert get("zeroshot")(store, dataset=plain).members == 0
    assert (
        "each class also scored by its members (6 names"
        in (tmp_path / "out" / "zeroshot-circles.md").read_text()
    )
    (copy / "class_members.json").write_text(json.dumps(members[:2]))
    assert main(argv) == 2
    assert "class_members.json must hold one list of names per class" in capsys.readouterr().err
