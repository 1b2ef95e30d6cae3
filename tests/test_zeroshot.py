"""Zero-shot classification: templates, the prompt-ensembled classifier, its disk cache, the
feature store and training-time evaluation, checked with stub models whose answers are known."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import cliplab
from cliplab.data.evalsets import ClassificationSet, RetrievalSet
from cliplab.encode import FeatureStore, encode_images, model_fingerprint
from cliplab.evaluation.metrics import target_ranks
from cliplab.evaluation.registry import get
from cliplab.evaluation.training import ProtocolEvaluator
from cliplab.zeroshot import (
    build_zero_shot_classifier,
    classify_images,
    list_templates,
    load_templates,
    member_names,
    pool_members,
    zero_shot_logits,
)

CLASSES = ["apple", "banana", "cherry", "grape", "lemon"]


class OneHotCLIP(nn.Module):
    """A stub CLIP whose right answers are known.

    Images are tensors holding their label (see :func:`stub_preprocess`); an image's feature
    is the one-hot of ``perm[label]``. A text's feature is the one-hot of the class name it
    mentions, plus, with ``template_dims``, a one in a dimension of its own for texts that
    say "photo" or "drawing" (so prompt averaging is visible).
    """

    def __init__(self, classnames, perm=None, template_dims=False):
        super().__init__()
        self.classnames = list(classnames)
        n = len(self.classnames)
        self.register_buffer("perm", torch.as_tensor(perm if perm is not None else range(n)))
        self.dim = n + 2
        self.template_dims = template_dims
        self.gain = nn.Parameter(torch.ones(()))  # weights for the fingerprint
        self.logit_scale = nn.Parameter(torch.tensor(math.log(100.0)))
        self.context_length = 77
        self.texts_seen = 0

    def encode_image(self, x):
        labels = x[:, 0].round().long()
        return F.one_hot(self.perm[labels], self.dim).float() * self.gain

    def encode_text(self, tokens):
        self.texts_seen += tokens.shape[0]
        out = torch.zeros(tokens.shape[0], self.dim)
        n = len(self.classnames)
        for i, row in enumerate(tokens):
            text = cliplab.decode(row)
            for c, name in enumerate(self.classnames):
                if re.search(rf"\b{name}\b", text):
                    out[i, c] = 1.0
            if self.template_dims and "photo" in text:
                out[i, n] += 1.0
            if self.template_dims and "drawing" in text:
                out[i, n + 1] += 1.0
        return out * self.gain


def stub_image(label: int) -> Image.Image:
    return Image.new("RGB", (4, 4), (10 * label, 0, 0))


def stub_preprocess(image: Image.Image) -> torch.Tensor:
    return torch.tensor([image.getpixel((0, 0))[0] / 10.0])


def stub_set(per_class: int = 3, name: str = "fruit") -> ClassificationSet:
    labels = [c for c in range(len(CLASSES)) for _ in range(per_class)]
    return ClassificationSet(
        images=[stub_image(y) for y in labels],
        labels=labels,
        classnames=CLASSES,
        templates=["a photo of a {}.", "a drawing of a {}."],
        name=name,
    )


# --------------------------------------------------------------------------- templates


def test_bundled_template_sets() -> None:
    names = list_templates()
    for name in ("bare", "photo", "imagenet80", "pets", "text", "emoji", "clipart"):
        assert name in names
    assert load_templates("bare") == ["{}"]
    assert load_templates("photo") == ["a photo of a {}."]
    imagenet = load_templates("imagenet80")
    assert len(imagenet) == len(set(imagenet)) == 80
    assert imagenet[0] == "a bad photo of a {}." and imagenet[-1] == "a tattoo of the {}."
    assert "itap of a {}." in imagenet and "a {} in a video game." in imagenet
    assert load_templates("pets") == ["a photo of a {}, a type of pet."]
    assert all('"{}"' in t for t in load_templates("text"))
    assert "an emoji of a {}" in load_templates("emoji")
    assert "a clip-art drawing of a {}." in load_templates("clipart")
    for name in names:
        assert all(t.count("{}") == 1 for t in load_templates(name))


def test_load_templates_from_files(tmp_path) -> None:
    (tmp_path / "list.json").write_text(json.dumps(["a {}", "the {}"]))
    (tmp_path / "obj.json").write_text(json.dumps({"templates": ["x {} y"]}))
    (tmp_path / "bad.json").write_text(json.dumps(["no placeholder"]))
    assert load_templates(tmp_path / "list.json") == ["a {}", "the {}"]
    assert load_templates(str(tmp_path / "obj.json")) == ["x {} y"]
    with pytest.raises(ValueError, match="exactly one"):
        load_templates(tmp_path / "bad.json")
    with pytest.raises(FileNotFoundError, match="imagenet80"):
        load_templates("no-such-set")


# --------------------------------------------------------------------------- the classifier


def test_classifier_rows_are_the_classes_and_zero_shot_is_exact() -> None:
    model = OneHotCLIP(CLASSES)
    weights = build_zero_shot_classifier(model, None, CLASSES, load_templates("imagenet80"))
    assert weights.shape == (len(CLASSES), model.dim)
    expected = torch.eye(len(CLASSES), model.dim)
    torch.testing.assert_close(weights, expected)
    data = stub_set()
    features = encode_images(model, data.images, stub_preprocess, batch_size=4)
    logits = zero_shot_logits(features, weights)
    assert (logits.argmax(1) == torch.tensor(data.labels)).all()


def test_prompt_ensembling_averages_normalised_embeddings() -> None:
    model = OneHotCLIP(CLASSES, template_dims=True)
    templates = ["a photo of a {}.", "a drawing of a {}.", "a {}."]
    weights = build_zero_shot_classifier(model, cliplab.tokenize, CLASSES, templates)
    n = len(CLASSES)
    for c in range(n):
        e = torch.eye(model.dim)
        per_template = [e[c] + e[n], e[c] + e[n + 1], e[c]]
        mean = torch.stack([F.normalize(v, dim=0) for v in per_template]).mean(0)
        torch.testing.assert_close(weights[c], F.normalize(mean, dim=0))


def test_permuted_stub_has_the_known_accuracy() -> None:
    perm = [1, 0, 2, 3, 4]  # apples look like bananas and bananas like apples
    model = OneHotCLIP(CLASSES, perm=perm)
    data = stub_set(per_class=4)
    store = FeatureStore(model, stub_preprocess, progress=False)
    result = get("zeroshot")(store, {"templates": "photo"}, dataset=data)
    assert result.top1 == pytest.approx(3 / 5)
    assert result.per_class["apple"] == 0.0 and result.per_class["cherry"] == 1.0
    assert result.confusion[0][1] == 4 and result.confusion[1][0] == 4
    # an apple scores 100 for banana and 0 for apple and the three others: the tie with the
    # three others counts against the model, so apple ranks last (4), not second
    weights = store.classifier(CLASSES, ["a photo of a {}."])
    ranks = target_ranks(zero_shot_logits(store.dataset(data), weights), data.labels)
    assert ranks.tolist() == [4] * 4 + [4] * 4 + [0] * 12


def test_classifier_is_batch_size_invariant() -> None:
    model = cliplab.create_model("tiny-vit").eval()
    templates = load_templates("imagenet7")
    a = build_zero_shot_classifier(model, None, CLASSES, templates, batch_size=3)
    b = build_zero_shot_classifier(model, None, CLASSES, templates, batch_size=256)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(len(CLASSES)))


def test_texts_batched_by_length_come_back_in_order_with_the_same_features() -> None:
    """encode_texts batches texts of similar length together: each row's feature is the one
    it gets alone (perturbed weights, so a misplaced row cannot match by accident)."""
    from cliplab.encode import encode_texts

    torch.manual_seed(0)
    model = cliplab.create_model("tiny-vit").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    texts = ["a cat", "a very long caption about a dog that runs on a beach at night", "x",
             "two birds", "a red car parked beside a tall green tree", "sky"] * 3  # fmt: skip
    texts = [f"{t} {i}" for i, t in enumerate(texts)]
    alone = torch.cat([encode_texts(model, None, [t], batch_size=1) for t in texts])
    together = encode_texts(model, None, texts, batch_size=4)
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)


def test_classifier_cache_is_invalidated_by_names_templates_and_weights(tmp_path) -> None:
    model = OneHotCLIP(CLASSES)
    templates = ["a photo of a {}.", "a {}."]

    def build(m, names=CLASSES, temps=templates):
        before = m.texts_seen
        w = build_zero_shot_classifier(m, None, names, temps, cache_dir=tmp_path)
        return w, m.texts_seen - before

    w1, encoded = build(model)
    assert encoded == len(CLASSES) * len(templates)
    w2, encoded = build(model)  # cached
    assert encoded == 0
    torch.testing.assert_close(w1, w2)
    same = OneHotCLIP(CLASSES)  # another object with the same weights hits the cache
    assert build(same)[1] == 0
    assert build(model, names=CLASSES[::-1])[1] > 0  # class order is part of the key
    assert build(model, temps=["a {}."])[1] > 0
    with torch.no_grad():
        model.gain.mul_(2.0)  # new weights
    w3, encoded = build(model)
    assert encoded > 0
    torch.testing.assert_close(w3, w1)  # unit rows either way
    assert len(list(tmp_path.glob("zeroshot-*.safetensors"))) == 4


def test_fingerprint_sees_any_weight_change() -> None:
    model = cliplab.create_model("tiny-vit")
    fp = model_fingerprint(model)
    assert fp == model_fingerprint(model)
    clone = cliplab.create_model("tiny-vit")
    clone.load_state_dict(model.state_dict())
    assert model_fingerprint(clone) == fp
    with torch.no_grad():  # one element that the evenly spaced samples skip
        param = model.text.token_embedding.weight
        param.view(-1)[7] += 1e-3
    assert model_fingerprint(model) != fp


def test_classify_images_gives_probabilities() -> None:
    model = OneHotCLIP(CLASSES)
    images = [stub_image(2), stub_image(0)]
    probs = classify_images(model, stub_preprocess, images, CLASSES)
    torch.testing.assert_close(probs.sum(1), torch.ones(2))
    assert probs.argmax(1).tolist() == [2, 0]
    assert probs[0, 2] > 0.99  # scale 100 on a cosine gap of 1


def test_classify_images_scores_a_label_by_its_best_member() -> None:
    model = OneHotCLIP(CLASSES)
    images = [stub_image(2), stub_image(0)]  # cherry, apple
    groups = ["stone fruit", "pome"]  # names the stub cannot see: only members can decide
    flat = classify_images(model, stub_preprocess, images, groups)
    torch.testing.assert_close(flat, torch.full((2, 2), 0.5))
    members = [["cherry", "grape"], ["apple"]]
    probs = classify_images(model, stub_preprocess, images, groups, members=members)
    assert probs.argmax(1).tolist() == [0, 1] and probs.min() < 0.01
    with pytest.raises(ValueError, match="member lists"):
        classify_images(model, stub_preprocess, images, groups, members=[["cherry"]])


def test_pool_members_takes_each_class_maximum() -> None:
    names, owner = member_names(["a", "b"], [["a1", "a2"], []])
    assert names == ["a", "a1", "a2", "b"] and owner.tolist() == [0, 0, 0, 1]
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, -1.0, 0.0, 9.0]])
    torch.testing.assert_close(
        pool_members(logits, owner, 2), torch.tensor([[3.0, 2.0], [5.0, 9.0]])
    )


# --------------------------------------------------------------------------- features


def test_feature_store_computes_once_per_model_and_set(tmp_path) -> None:
    data = stub_set()
    model = OneHotCLIP(CLASSES)
    store = FeatureStore(model, stub_preprocess, cache_dir=tmp_path, progress=False)
    a = store.dataset(data)
    b = store.dataset(data)
    assert store.computed == 1 and a is b
    again = FeatureStore(OneHotCLIP(CLASSES), stub_preprocess, cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(again.dataset(data), a)
    assert again.computed == 0  # read from disk
    other = stub_set(per_class=2)
    again.dataset(other)
    assert again.computed == 1  # another set is another key
    model2 = OneHotCLIP(CLASSES, perm=[4, 3, 2, 1, 0])
    moved = FeatureStore(model2, stub_preprocess, cache_dir=tmp_path, progress=False)
    assert not torch.equal(moved.dataset(data), a)
    assert moved.computed == 1


def test_prompt_ablation_on_stub() -> None:
    store = FeatureStore(OneHotCLIP(CLASSES, perm=[1, 0, 2, 3, 4]), stub_preprocess, progress=False)
    result = get("prompts")(store, {"ensemble": "imagenet7"}, dataset=stub_set())
    assert list(result.results) == ["bare", "photo", "dataset", "ensemble"]
    assert all(r["top1"] == pytest.approx(3 / 5) for r in result.results.values())
    assert all(g == pytest.approx(0.0) for g in result.gain_points.values())
    assert result.results["ensemble"]["templates"] == 7


class KeywordCLIP(OneHotCLIP):
    """A stub whose prompts matter: a text names its class correctly only with its class
    list's keyword ("photo" for the test classes, "drawing" for the validation classes),
    otherwise it points at the next class."""

    def __init__(self, test_classes, validation_classes):
        super().__init__(test_classes)
        self.keyword = {n: "photo" for n in test_classes} | {
            n: "drawing" for n in validation_classes
        }
        self.index = {
            n: i for names in (test_classes, validation_classes) for i, n in enumerate(names)
        }

    def encode_text(self, tokens):
        out = torch.zeros(tokens.shape[0], self.dim)
        n = len(self.classnames)
        for i, row in enumerate(tokens):
            text = cliplab.decode(row)
            name = next(c for c in self.index if re.search(rf"\b{c}\b", text))
            c = self.index[name]
            out[i, c if self.keyword[name] in text else (c + 1) % n] = 1.0
        return out * self.gain


def test_prompt_engineering_is_chosen_on_validation_not_on_the_test() -> None:
    # on the validation classes only "drawing" prompts are right, on the test classes only
    # "photo" ones: the template chosen on validation must be the drawing one, and its test
    # figure (0%) what is reported as "chosen", however well "photo" does on the test
    val_classes = ["kiwi", "mango", "melon", "peach", "plum"]
    model = KeywordCLIP(CLASSES, val_classes)
    store = FeatureStore(model, stub_preprocess, progress=False)
    validation = ClassificationSet(
        [stub_image(y) for y in range(5)], list(range(5)), val_classes, name="val"
    )
    result = get("prompts")(
        store, {"ensemble": "imagenet7"}, dataset=stub_set(), validation=validation
    )
    assert result.chosen == "one: a drawing of a {}." and result.validation == "val"
    assert result.validation_top1[result.chosen] == 1.0
    assert result.validation_top1["bare"] == 0.0 and result.validation_top1["photo"] == 0.0
    assert result.results["chosen"]["top1"] == 0.0 and result.results["photo"]["top1"] == 1.0
    assert result.gain_points["chosen"] == 0.0 and result.gain_points["photo"] == 100.0
    assert "chosen" in result.markdown() and "'one: a drawing of a {}.'" in result.markdown()
    # from its dict, the same (reports are rewritten from results.json)
    again = type(result).from_dict(result.to_dict())
    assert again.chosen == result.chosen and again.validation_top1 == result.validation_top1


# --------------------------------------------------------------------------- training time


def test_zero_shot_during_training_on_stub_and_on_a_real_model() -> None:
    data = stub_set()
    evaluator = ProtocolEvaluator(
        "zeroshot", {"dataset": data}, transform=stub_preprocess, batch_size=4
    )
    metrics = evaluator(OneHotCLIP(CLASSES, perm=[1, 0, 2, 3, 4]), step=10)
    assert metrics == {
        "zeroshot_fruit_top1": pytest.approx(3 / 5),
        "zeroshot_fruit_top5": 1.0,
        "zeroshot_fruit_mean_per_class_recall": pytest.approx(3 / 5),
    }
    model = cliplab.create_model("tiny-vit").train()
    evaluator = ProtocolEvaluator(
        "zeroshot", {"dataset": data}, {"templates": "photo"}, max_images=6
    )
    metrics = evaluator(model, step=1)
    assert model.training  # the mode is restored
    # the same figure as `cliplab eval zeroshot` on the same six images
    store = FeatureStore(model.eval(), cliplab.create_model_and_transforms("tiny-vit")[2])
    subset = evaluator.inputs["dataset"]
    assert len(subset) == 6
    offline = get("zeroshot")(store, {"templates": "photo"}, dataset=subset)
    model.train()
    assert metrics["zeroshot_fruit_top1"] == offline.top1
    assert metrics == evaluator(model, step=2)  # preprocessed once, same answer


def test_retrieval_during_training_on_stub() -> None:
    images = [stub_image(c) for c in range(len(CLASSES))]
    captions = [[f"a photo of a {c}", f"one {c}"] for c in CLASSES]
    data = RetrievalSet(images, captions, name="r")
    evaluator = ProtocolEvaluator("retrieval", {"dataset": data}, transform=stub_preprocess)
    metrics = evaluator(OneHotCLIP(CLASSES), 0)
    assert metrics["retrieval_r_image_to_text_R@1"] == 1.0
    assert metrics["retrieval_r_text_to_image_R@1"] == 1.0
    # apples look like bananas and bananas like apples: 2 of 5 images miss at R@1
    swapped = evaluator(OneHotCLIP(CLASSES, perm=[1, 0, 2, 3, 4]), 1)
    assert swapped["retrieval_r_image_to_text_R@1"] == pytest.approx(3 / 5)
    assert swapped["retrieval_r_text_to_image_R@1"] == pytest.approx(6 / 10)


def test_fingerprint_of_a_tensor_over_2_24_elements() -> None:
    """float32 index arithmetic rounds past 2**24: the sampled positions must stay in range."""

    class Big(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.zeros(25_296_896))  # ViT-B/32's token embedding

    big = Big()
    fp = model_fingerprint(big)
    with torch.no_grad():
        big.weight[-1] = 1.0  # the last element is sampled
    assert model_fingerprint(big) != fp


# --------------------------------------------------------------------------- groups


def test_regroup_pools_sets_by_a_class_info_field() -> None:
    from dataclasses import replace

    from cliplab.evaluation.groups import class_info_by_name, regroup

    kinds = ["Tree-Fruit", "Tropical", "Tree-Fruit", "Vine", "Component"]
    info = [{"category": k} for k in kinds]
    a = replace(stub_set(per_class=3, name="a"), class_info=info)
    b = replace(stub_set(per_class=1, name="b"), class_info=info)
    pooled = regroup([a, b], "category")
    # "Component" (lemon) is never a group; names are said as captions say them
    assert pooled.classnames == ["tree fruit", "tropical", "vine"]
    assert len(pooled) == 4 * 4 and pooled.name == "a+b by category"
    assert pooled.labels.count(0) == 8 and pooled.labels.count(2) == 4
    # every apple and cherry image (labels 0 and 2 in the sources) is in "tree fruit"
    sources = [*a.labels, *b.labels]
    assert [y for y, s in zip(pooled.labels, [s for s in sources if s != 4]) if s in (0, 2)] == [
        0
    ] * 8
    assert regroup([a, b], "category", min_images=5).classnames == ["tree fruit"]
    # a set without class_info borrows it by class name; classes fixed by the test set
    plain = stub_set(per_class=2, name="validation")
    val = regroup([plain], "category", info=class_info_by_name([a]), classes=["vine", "tropical"])
    assert val.classnames == ["vine", "tropical"] and sorted(val.labels) == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="no category group with 50 or more"):
        regroup([a], "category", min_images=50)
    with pytest.raises(ValueError, match="class_info entries"):
        replace(a, class_info=info[:2])


def test_choose_zero_shot_scores_each_candidate_on_validation() -> None:
    from dataclasses import replace

    from cliplab.evaluation.protocols.zeroshot import choose_zero_shot

    store = FeatureStore(OneHotCLIP(CLASSES), stub_preprocess, progress=False)
    val = stub_set()
    candidates = {
        "plural": replace(val, templates=["{}s"]),
        "named": replace(val, templates=["a {}"]),
        "named too": replace(val, templates=["{}, fresh"]),
    }
    best, scores = choose_zero_shot(store, candidates)
    # the stub does not see "apples" as "apple": every class ties, and ties count as wrong
    assert scores == pytest.approx({"plural": 0.0, "named": 1.0, "named too": 1.0})
    assert best == "named"  # the first of the equal best
    with pytest.raises(ValueError, match="no candidate"):
        choose_zero_shot(store, {})


def test_class_members_score_a_class_by_its_best_name() -> None:
    from dataclasses import replace

    from cliplab.evaluation.groups import regroup, zero_shot_candidates
    from cliplab.evaluation.protocols.zeroshot import zero_shot_features

    # group names the stub cannot read ("tree fruit"): only the members name the fruit
    kinds = ["Tree-Fruit", "Tropical", "Tree-Fruit", "Vine", "Berry"]
    fruit = replace(stub_set(per_class=2), class_info=[{"category": k} for k in kinds])
    groups = regroup([fruit], "category")
    assert groups.classnames == ["berry", "tree fruit", "tropical", "vine"]
    assert groups.class_members == (("lemon",), ("apple", "cherry"), ("banana",), ("grape",))
    store = FeatureStore(OneHotCLIP(CLASSES), stub_preprocess, progress=False)
    logits, _ = zero_shot_features(store, replace(groups, templates=["{}"]))
    # each image's logit for its group is 100 (its fruit's one-hot), every other group's 0
    expected = torch.zeros(len(groups), 4)
    expected[torch.arange(len(groups)), torch.tensor(groups.labels)] = store.logit_scale
    torch.testing.assert_close(logits, expected)
    setups = zero_shot_candidates(groups, {"bare": ["{}"], "photo": ["a photo of a {}."]})
    assert list(setups) == ["bare", "photo", "bare + members", "photo + members"]
    assert setups["bare"].class_members is None
    top1 = {k: get("zeroshot")(store, dataset=v).top1 for k, v in setups.items()}
    assert top1["bare"] == 0.0 and top1["bare + members"] == 1.0
    with pytest.raises(ValueError, match="class_members lists"):
        replace(groups, class_members=[["apple"]])
