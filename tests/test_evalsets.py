"""The on-disk evaluation-set format: write, read back, reject what is malformed."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from cliplab.data.evalsets import (
    EvalSetWriter,
    is_evalset,
    load_classification,
    load_retrieval,
    read_meta,
    write_classification_set,
    write_retrieval_set,
)


def _rgba(color: tuple[int, int, int], alpha: int = 0) -> Image.Image:
    image = Image.new("RGBA", (16, 16), (*color, alpha))
    image.paste((*color, 255), (4, 4, 12, 12))
    return image


def test_classification_roundtrip(tmp_path):
    path = tmp_path / "toy"
    items = [
        (_rgba((255, 0, 0)), 0, {"key": "r"}),
        (_rgba((0, 0, 255)), 1),
        (_rgba((0, 0, 255)), 1),
    ]
    meta = write_classification_set(
        path,
        items,
        name="toy",
        classnames=["red square", "blue square"],
        templates=["a photo of a {}.", "{}"],
        license="CC0",
        class_info=[{"id": "r"}, {"id": "b"}],
        class_members=[["crimson square"], ["navy square", "azure square"]],
    )
    assert meta["num_images"] == 3 and meta["num_classes"] == 2
    assert meta["chance"] == pytest.approx(0.5) and meta["majority"] == pytest.approx(2 / 3)
    s = load_classification(path)
    assert len(s) == 3 and s.labels == [0, 1, 1] and s.classnames == ["red square", "blue square"]
    assert s.templates == ["a photo of a {}.", "{}"] and s.name == "toy"
    assert s.rows[0]["key"] == "r" and s.class_info == [{"id": "r"}, {"id": "b"}]
    assert s.class_members == (("crimson square",), ("navy square", "azure square"))
    assert all(p.is_file() and p.parent.name == "images" for p in s.images)
    image = s.image(0)
    # transparency was composited onto white at write time: a plain RGB file on disk
    with Image.open(s.images[0]) as raw:
        assert raw.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255) and image.getpixel((8, 8)) == (255, 0, 0)
    assert is_evalset(path) and read_meta(path)["license"] == "CC0"


def test_readers_return_the_evaluation_types(tmp_path):
    """The evaluators take what the readers return, with the index rows kept in step."""
    import cliplab.evaluation
    from cliplab.data.evalsets import ClassificationSet, RetrievalSet

    items = [(Image.new("RGB", (8, 8), (i, 0, 0)), i % 2, {"n": i}) for i in range(4)]
    write_classification_set(
        tmp_path / "c", items, name="c", classnames=["a", "b"], templates=["{}"]
    )
    s = load_classification(tmp_path / "c")
    assert (
        type(s) is ClassificationSet
        and cliplab.evaluation.load_classification is load_classification
    )
    assert [r["n"] for r in s.subset([3, 1]).rows] == [3, 1]
    assert [r["n"] for r in s.only_classes(["b"]).rows] == [1, 3]
    assert s.subset([3, 1]).image(0).getpixel((0, 0)) == (3, 0, 0)
    write_retrieval_set(tmp_path / "r", [(Image.new("RGB", (8, 8)), ["x"])], name="r")
    assert type(load_retrieval(tmp_path / "r")) is RetrievalSet
    with pytest.raises(ValueError, match="index rows"):
        ClassificationSet(images=s.images, labels=s.labels, classnames=s.classnames, rows=[{}])


def test_retrieval_roundtrip(tmp_path):
    items = [
        (Image.new("RGB", (8, 8), "red"), ["a red square", "red"]),
        (Image.new("L", (8, 8), 0), [" a black square "], {"id": 7}),
    ]
    meta = write_retrieval_set(tmp_path / "r", items, name="r", description="squares")
    assert meta["num_images"] == 2 and meta["num_captions"] == 3
    s = load_retrieval(tmp_path / "r")
    assert s.captions == [["a red square", "red"], ["a black square"]]
    assert s.texts == ["a red square", "red", "a black square"] and s.text_to_image == [0, 0, 1]
    assert s.rows[1]["id"] == 7 and s.image(1).mode == "RGB"
    with pytest.raises(ValueError, match="not 'classification'"):
        load_classification(tmp_path / "r")


def test_a_failed_write_leaves_nothing(tmp_path):
    path = tmp_path / "broken"
    with pytest.raises(RuntimeError), EvalSetWriter(path, "retrieval", name="broken") as w:
        w.add(Image.new("RGB", (8, 8)), captions=["x"])
        raise RuntimeError("interrupted")
    assert not path.exists() and list(tmp_path.iterdir()) == []
    assert not is_evalset(path)


def test_rewriting_replaces_the_old_set(tmp_path):
    path = tmp_path / "s"
    for n in (3, 1):
        write_retrieval_set(
            path, [(Image.new("RGB", (8, 8)), [f"caption {i}"]) for i in range(n)], name="s"
        )
    assert len(load_retrieval(path)) == 1 and len(list((path / "images").iterdir())) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"classnames": ["a", "a"], "templates": ["{}"]}, "duplicate class names"),
        ({"classnames": ["a"], "templates": ["no placeholder"]}, "exactly one"),
        ({"classnames": [], "templates": ["{}"]}, "needs class names"),
        ({"classnames": ["a"], "templates": ["{}"], "class_info": []}, "one entry per class"),
        ({"classnames": ["a"], "templates": ["{}"], "class_members": []}, "one list of names"),
    ],
)
def test_writer_rejects_bad_sets(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        EvalSetWriter(tmp_path / "s", "classification", name="s", **kwargs)


def test_writer_rejects_bad_items(tmp_path):
    with EvalSetWriter(
        tmp_path / "c", "classification", name="c", classnames=["a"], templates=["{}"]
    ) as w:
        with pytest.raises(ValueError, match="label"):
            w.add(Image.new("RGB", (8, 8)), label=1)
        w.add(Image.new("RGB", (8, 8)), label=0)
    with EvalSetWriter(tmp_path / "r", "retrieval", name="r") as w:
        with pytest.raises(ValueError, match="caption"):
            w.add(Image.new("RGB", (8, 8)), captions=["  "])
        w.add(Image.new("RGB", (8, 8)), captions=["ok"])
    with (
        pytest.raises(ValueError, match="no images"),
        EvalSetWriter(tmp_path / "e", "retrieval", name="e"),
    ):
        pass


def test_reader_rejects_malformed_sets(tmp_path):
    path = tmp_path / "s"
    write_classification_set(
        path, [(Image.new("RGB", (8, 8)), 0)], name="s", classnames=["a"], templates=["{}"]
    )
    index = path / "index.jsonl"
    index.write_text(json.dumps({"file": "images/000000.png", "label": 5}) + "\n")
    with pytest.raises(ValueError, match="labels outside"):
        load_classification(path)
    index.write_text(json.dumps({"file": "../../etc/passwd", "label": 0}) + "\n")
    with pytest.raises(ValueError, match="leaves"):
        load_classification(path)
    with pytest.raises(FileNotFoundError):
        load_classification(tmp_path / "missing")


@pytest.mark.parametrize("members", [[["a"]], {"a": 1}, [["x"], [2]], [["x"], "y"]])
def test_malformed_class_members_is_a_clear_error(tmp_path, members):
    path = tmp_path / "toy"
    items = [(_rgba((255, 0, 0)), 0), (_rgba((0, 0, 255)), 1)]
    write_classification_set(path, items, name="toy", classnames=["r", "b"], templates=["{}"])
    assert load_classification(path).class_members is None
    (path / "class_members.json").write_text(json.dumps(members))
    with pytest.raises(ValueError, match="one list of names per class"):
        load_classification(path)


def test_only_classes_is_a_smaller_task_renumbered() -> None:
    """A held-out slice of classes: their examples, classified among them alone."""
    import torch

    from cliplab.data.evalsets import ClassificationSet

    full = ClassificationSet(
        images=torch.arange(6.0).view(6, 1, 1, 1).expand(6, 3, 4, 4),
        labels=[0, 1, 2, 2, 1, 0],
        classnames=["cat", "Dog", "fish"],
        templates=["a {}."],
        class_info=[{"c": 0}, {"c": 1}, {"c": 2}],
        name="pets",
    )
    part = full.only_classes(["fish", "dog"], name="held-out")
    assert part.classnames == ["Dog", "fish"]  # this set's order, its own spelling
    assert part.labels == [0, 1, 1, 0]
    assert part.images[:, 0, 0, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # the examples kept
    assert part.templates == ["a {}."]
    assert [c["c"] for c in part.class_info] == [1, 2]
    assert part.name == "held-out" and part.fingerprint != full.fingerprint
    with pytest.raises(ValueError, match="no class named"):
        full.only_classes(["cat", "horse"])
