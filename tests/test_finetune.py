"""Fine-tuning (issue 26): starting from a checkpoint, locked towers (one process, DDP and
FSDP on 2 gloo processes), layer-wise learning-rate decay, the weight average, labelled
folders as pairs, weight-space ensembles and the ``finetune`` / ``merge`` commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from PIL import Image

import cliplab
from cliplab.checkpoints.errors import CheckpointError
from cliplab.checkpoints.merge import interpolate, read_pair
from cliplab.cli import main
from cliplab.data.classes import LabelledImages, read_classnames, split_rows
from cliplab.factory import create_model
from cliplab.presets import get_config
from cliplab.train import Trainer
from cliplab.train.distributed import DistEnv
from cliplab.train.finetune import layer_groups
from gloo import join_gloo, leave_gloo
from train_helpers import fixed_batch, tiny_config

B = 8


def _perturbed(seed: int = 1, **settings) -> torch.nn.Module:
    """A tiny-vit with every weight moved off its initial value (LayerNorms included)."""
    torch.manual_seed(seed)
    model = create_model(get_config("tiny-vit", **settings))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pre") / "model"
    cliplab.save(_perturbed(), path)
    return path


def _config(pretrained: Path, model: dict | None = None, **sections):
    return tiny_config(
        model={"pretrained": str(pretrained), **(model or {})},
        data={"batch_size": 2 * B},
        **sections,
    )


def _tower(sd: dict, tower: str) -> dict:
    return {k: v for k, v in sd.items() if k.startswith(tower + ".")}


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# -- starting from weights ---------------------------------------------------------------
def test_step_zero_is_the_checkpoint_and_resuming_never_rereads_it(pretrained, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(pretrained, source)
    out = tmp_path / "run"
    trainer = Trainer(_config(source, train={"steps": 2}), output=out)
    reference, _ = cliplab.load(source)
    assert _identical(trainer.model.state_dict(), reference.state_dict())
    images, tokens = fixed_batch(4, seed=3)
    trainer.model.eval()
    with torch.no_grad():
        ours = trainer.model.encode_image(images), trainer.model.encode_text(tokens)
        theirs = reference.encode_image(images), reference.encode_text(tokens)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    summary = trainer.fit()
    assert summary["status"] == "complete" and summary["step"] == 2
    assert json.loads((out / "pretrained.json").read_text())["source"] == str(source)
    after = cliplab.load(out / "model")[0].state_dict()
    assert not _identical(after, reference.state_dict())  # it trained
    shutil.rmtree(source)  # a resumed fine-tune needs its checkpoint, not the source
    resumed = Trainer(_config(source, train={"steps": 4}), output=out)
    summary = resumed.fit()
    assert summary["resumed_from"] == 2 and summary["step"] == 4


def test_settings_that_change_a_weight_shape_are_refused(pretrained, tmp_path):
    with pytest.raises(ValueError, match="change the shape of the pretrained weights"):
        Trainer(_config(pretrained, {"vision": {"width": 96}}), output=tmp_path / "a")
    trainer = Trainer(
        _config(pretrained, {"vision": {"patch_dropout": 0.5}}), output=tmp_path / "b"
    )
    assert trainer.model.config.vision.patch_dropout == 0.5


def test_zero_shot_is_measured_before_the_first_step(pretrained, tmp_path):
    from cliplab.data.evalsets import ClassificationSet
    from cliplab.evaluation.training import ProtocolEvaluator

    images = [Image.new("RGB", (32, 32), c) for c in ("red", "green", "blue", "red")]
    evalset = ClassificationSet(images, [0, 1, 2, 0], ["red", "green", "blue"], name="colours")
    evaluator = ProtocolEvaluator("zeroshot", {"dataset": evalset})
    trainer = Trainer(
        _config(pretrained, train={"steps": 1}), output=tmp_path, evaluators=[evaluator]
    )
    summary = trainer.fit()
    assert "zeroshot_colours_top1" in summary["eval_before"]
    expected = evaluator(cliplab.load(pretrained)[0], 0)
    assert summary["eval_before"] == expected
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [0, 1]


# -- which weights train -----------------------------------------------------------------
def test_layer_groups_follow_openclip():
    model = create_model(get_config("tiny-vit"))
    groups = layer_groups(model)
    layers = model.config.vision.layers
    assert groups["visual.conv1.weight"] == ("visual", 0, layers + 2)
    assert groups["visual.transformer.resblocks.0.ln_1.weight"][1] == 1
    assert groups["visual.ln_post.weight"][1] == layers  # with the last block
    assert groups["visual.proj"][1] == layers + 1
    assert groups["text.token_embedding.weight"][1] == 0
    assert groups["text.text_projection"][1] == model.config.text.layers + 1
    assert "logit_scale" not in groups
    rn = layer_groups(create_model(get_config("tiny-rn")))
    _, head, total = rn["visual.attnpool.c_proj.weight"]
    assert rn["visual.conv1.weight"][1] == 0 and head == total - 1
    assert rn["visual.layer1.0.conv1.weight"][1] == 1


@pytest.mark.parametrize(
    "model, frozen, trained",
    [
        ({"lock_image": True}, ["visual."], ["text.", "logit_scale"]),
        ({"lock_text": True}, ["text."], ["visual.", "logit_scale"]),
        (
            {"lock_image": True, "lock_image_unlocked_groups": 2},
            # tiny-vit has 2 blocks: the last group (proj) and the one before (block 1 with
            # ln_post) train, the stem and block 0 stay
            ["visual.conv1", "visual.ln_pre", "visual.transformer.resblocks.0."],
            ["visual.transformer.resblocks.1.", "visual.ln_post", "visual.proj", "text."],
        ),
    ],
)
def test_locked_weights_stay_bit_identical(pretrained, tmp_path, model, frozen, trained):
    trainer = Trainer(_config(pretrained, model, train={"steps": 3}), output=tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for k in range(3):
        trainer.train_step(*fixed_batch(2 * B, seed=10 + k))
    after = trainer.model.state_dict()
    for key in before:
        if any(key.startswith(p) for p in frozen):
            assert torch.equal(before[key], after[key]), key
        elif any(key.startswith(p) for p in trained):
            assert not torch.equal(before[key], after[key]), key
    # locked weights have neither gradients nor optimiser state
    locked = [
        p for n, p in trainer.model.named_parameters() if any(n.startswith(f) for f in frozen)
    ]
    assert locked and all(not p.requires_grad and p.grad is None for p in locked)
    assert all(p not in trainer.optimizer.state for p in locked)


def test_a_locked_resnet_keeps_its_batchnorm_statistics(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "rn"
    cliplab.save(create_model(get_config("tiny-rn")), path)
    config = tiny_config(
        model={"pretrained": str(path), "lock_image": True}, data={"batch_size": 8}
    )
    trainer = Trainer(config, output=tmp_path / "run")
    visual = {k: v.clone() for k, v in trainer.model.visual.state_dict().items()}
    size = trainer.model.image_size
    for k in range(2):
        trainer.train_step(*fixed_batch(8, seed=k, image_size=size))
    assert _identical(visual, trainer.model.visual.state_dict())  # running stats included


def test_layer_decay_and_no_decay_on_embeddings(pretrained, tmp_path):
    optim = {"lr": 1e-3, "layer_decay": 0.5, "embedding_decay": False, "weight_decay": 0.1}
    trainer = Trainer(_config(pretrained, optim=optim), output=tmp_path)
    by_param = {
        id(p): (g["lr"], g["weight_decay"])
        for g in trainer.optimizer.param_groups
        for p in g["params"]
    }
    params = dict(trainer.model.named_parameters())
    layers = trainer.model.config.vision.layers
    lr0 = trainer.optimizer.param_groups[0]["lr"]  # the schedule's lr (warm-up) of scale 1

    def lr(name):
        return by_param[id(params[name])][0] / lr0

    assert lr("visual.proj") == 1.0
    assert lr("visual.ln_post.weight") == 0.5
    assert lr("visual.transformer.resblocks.0.attn.in_proj_weight") == pytest.approx(0.5**layers)
    assert lr("visual.conv1.weight") == pytest.approx(0.5 ** (layers + 1))
    assert lr("logit_scale") == 1.0
    assert by_param[id(params["text.token_embedding.weight"])][1] == 0.0
    assert by_param[id(params["visual.positional_embedding"])][1] == 0.0
    assert by_param[id(params["visual.conv1.weight"])][1] == 0.1
    assert by_param[id(params["visual.ln_pre.weight"])][1] == 0.0


def test_weight_average_is_evaluated_saved_and_resumed(pretrained, tmp_path):
    config = _config(pretrained, train={"steps": 3, "ema_decay": 0.5})
    trainer = Trainer(config, output=tmp_path)
    expected = {k: v.clone().float() for k, v in trainer.model.state_dict().items()}
    for k in range(2):
        trainer.train_step(*fixed_batch(2 * B, seed=k))
        for name, value in trainer.model.state_dict().items():
            expected[name] = 0.5 * expected[name] + 0.5 * value.float()
    assert all(torch.allclose(trainer.average.state[k], expected[k], atol=1e-7) for k in expected)
    trainer.save_checkpoint()
    summary = Trainer(config, output=tmp_path).fit()
    assert summary["resumed_from"] == 2
    ema = cliplab.load(tmp_path / "model-ema")[0].state_dict()
    raw = cliplab.load(tmp_path / "model")[0].state_dict()
    assert not _identical(ema, raw)


# -- DDP and FSDP: locks across processes --------------------------------------------------
def _locked_worker(rank: int, init_file: str, pretrained: str, out: str) -> None:
    join_gloo(rank, 2, init_file)
    env = DistEnv(rank=rank, world_size=2)
    mine = slice(rank * B, (rank + 1) * B)
    report = {}
    for kind in ("ddp", "fsdp"):
        config = _config(Path(pretrained), {"lock_image": True}, train={"parallelism": kind})
        trainer = Trainer(config, output=f"{out}-{kind}", env=env)
        for k in range(2):
            images, tokens = fixed_batch(2 * B, seed=30 + k)
            trainer.train_step(images[mine], tokens[mine])
        gathered = trainer.gathered_model()
        report[kind] = gathered.state_dict() if gathered is not None else None
    if rank == 0:
        torch.save(report, f"{out}.report")
    leave_gloo()


def test_locked_tower_is_identical_under_ddp_and_fsdp(pretrained, tmp_path):
    out = tmp_path / "run"
    mp.spawn(_locked_worker, args=(str(tmp_path / "init"), str(pretrained), str(out)), nprocs=2)
    report = torch.load(f"{out}.report", weights_only=False)
    source = cliplab.load(pretrained)[0].state_dict()
    for kind in ("ddp", "fsdp"):
        assert _identical(_tower(report[kind], "visual"), _tower(source, "visual")), kind
        assert not _identical(_tower(report[kind], "text"), _tower(source, "text")), kind
    diff = max((report["ddp"][k] - report["fsdp"][k]).abs().max().item() for k in source)
    assert diff < 1e-5


# -- labelled folders ----------------------------------------------------------------------
def _class_folder(root: Path, per_class: int = 10) -> Path:
    rng = np.random.default_rng(0)
    for name, colour in (
        ("red_thing", (220, 30, 30)),
        ("green", (30, 200, 30)),
        ("blue", (30, 30, 220)),
    ):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-30, 30, (16, 16, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    (root / "README.txt").write_text("not a class")
    return root


def test_labelled_folder_split_names_and_captions(tmp_path):
    root = _class_folder(tmp_path / "imgs")
    (tmp_path / "names.json").write_text(
        json.dumps({"red_thing": "red", "green": "lime", "blue": "navy"})
    )
    train = LabelledImages(root, split="train", classnames=str(tmp_path / "names.json"))
    val = LabelledImages(root, split="val", classnames=str(tmp_path / "names.json"))
    assert train.classnames == ["navy", "lime", "red"]  # sorted folders, mapped
    assert train.counts() == {"navy": 9, "lime": 9, "red": 9}
    assert {k for k, _ in val.rows}.isdisjoint({k for k, _ in train.rows})
    assert len(val) == 3 and LabelledImages(root, split="all").counts()["red thing"] == 10
    again = LabelledImages(root, split="val", classnames=str(tmp_path / "names.json"))
    assert again.rows == val.rows  # the same split every time
    held_out = train.classification_set("val")
    assert held_out.classnames == ["navy", "lime", "red"] and len(held_out) == 3
    import random

    from cliplab.data.classes import template_caption

    sample = train.record(0)
    captions = {template_caption(sample, random.Random(s)) for s in range(20)}
    assert len(captions) > 1 and all("navy" in c for c in captions)


def test_labelled_table_and_bad_input(tmp_path):
    root = _class_folder(tmp_path / "imgs")
    table = tmp_path / "imgs" / "labels.csv"
    table.write_text(
        "path,label\nred_thing/000.png,red\ngreen/000.png,green\ngreen/001.png,green\n"
    )
    source = LabelledImages(table)
    assert source.classnames == ["green", "red"] and len(source) == 3
    (tmp_path / "bad.csv").write_text("path,label\n../etc/passwd,x\n")
    with pytest.raises(ValueError, match="inside the table's folder"):
        LabelledImages(tmp_path / "bad.csv")
    with pytest.raises(ValueError, match="no name for label"):
        (tmp_path / "few.csv").write_text("label,name\nred_thing,red\n")
        LabelledImages(root, classnames=str(tmp_path / "few.csv"))
    with pytest.raises(ValueError, match="neither a folder"):
        LabelledImages(tmp_path / "nothing.bin")
    assert read_classnames(tmp_path / "few.csv") == {"red_thing": "red"}
    train, val = split_rows([("a", "x"), ("b", "x"), ("c", "y")], 0.5, 0)
    assert len(val) == 1 and sorted(train + val) == [0, 1, 2]  # a lone image stays in training


# -- weight-space ensembles ---------------------------------------------------------------
def test_interpolation_and_architecture_check(pretrained, tmp_path):
    other = tmp_path / "b.safetensors"
    cliplab.save(_perturbed(seed=7), other)
    inputs = read_pair(pretrained, other)
    a, b = cliplab.load(pretrained)[0].state_dict(), cliplab.load(other)[0].state_dict()
    assert _identical(interpolate(inputs, 0.0).state_dict(), a)
    assert _identical(interpolate(inputs, 1.0).state_dict(), b)
    mid = interpolate(inputs, 0.3).state_dict()
    assert all(torch.allclose(mid[k], 0.7 * a[k] + 0.3 * b[k], atol=1e-6) for k in a)
    wider = tmp_path / "wide.safetensors"
    cliplab.save(create_model(get_config("tiny-vit", embed_dim=48)), wider)
    with pytest.raises(CheckpointError, match="different architectures"):
        read_pair(pretrained, wider)
    assert main(["merge", str(pretrained), str(wider), "--out", str(tmp_path / "x")]) == 2


def test_merge_command_sweeps_evaluates_and_plots(pretrained, tmp_path):
    from cliplab.data.evalsets import write_classification_set

    other = tmp_path / "b"
    cliplab.save(_perturbed(seed=7), other)
    for name, colours in (("task", ("red", "green")), ("shift", ("blue", "red"))):
        images = [Image.new("RGB", (20, 20), c) for c in colours * 2]
        write_classification_set(
            tmp_path / name,
            zip(images, [0, 1, 0, 1]),
            name=name,
            classnames=list(colours),
            templates=["a {} square."],
        )
    out = tmp_path / "merged"
    argv = ["merge", str(pretrained), str(other), "--alpha", "0,0.5,1", "--out", str(out)]
    assert main([*argv, "--eval", str(tmp_path / "task"), str(tmp_path / "shift")]) == 0
    record = json.loads((out / "wise-ft.json").read_text())
    assert [r["alpha"] for r in record["rows"]] == [0.0, 0.5, 1.0]
    assert (out / "wise-ft.png").stat().st_size > 1000
    assert _identical(
        cliplab.load(out / "alpha-1")[0].state_dict(), cliplab.load(other)[0].state_dict()
    )
    with pytest.raises(SystemExit) as exit_:
        main([*argv[:3], "--alpha", "1.5", "--out", str(out)])
    assert exit_.value.code == 2


def test_finetune_command_end_to_end(pretrained, tmp_path):
    root = _class_folder(tmp_path / "imgs", per_class=12)
    out = tmp_path / "ft"
    argv = ["finetune", str(root), "--model", str(pretrained), "--out", str(out)]
    assert (
        main(
            [
                *argv,
                "--steps",
                "3",
                "--lr",
                "1e-4,1e-3",
                "--set",
                "data.batch_size=8",
                "--set",
                "train.threads=1",
            ]
        )
        == 0
    )
    report = json.loads((out / "report.json").read_text())
    assert [c["lr"] for c in report["candidates"]] == [1e-4, 1e-3]
    best = max(report["candidates"], key=lambda c: c["val_top1_after"])
    assert report["chosen_lr"] == best["lr"] and report["val_top1_before"] is not None
    model, _ = cliplab.load(out / "model")
    assert model.config.embed_dim == 32
    assert "validation split" in (out / "report.md").read_text()
    assert (
        main(
            [
                *argv[:2],
                "--model",
                str(pretrained),
                "--out",
                str(out),
                "--steps",
                "0",
                "--minutes",
                "0",
            ]
        )
        == 2
    )


def test_the_example_config_loads_and_round_trips():
    from cliplab.train.config import Config, load_config

    config = load_config(Path(__file__).parents[1] / "configs" / "finetune-lit.toml")
    assert config.model.pretrained and config.model.lock_image
    assert config.data.sources[0].kind == "classes" and not config.optim.embedding_decay
    assert Config.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="layer_decay"):
        load_config(None, ["optim.layer_decay=0"])
    with pytest.raises(ValueError, match="ema_decay"):
        load_config(None, ["train.ema_decay=1.5"])
    assert load_config(None, ["model.lock_text=true"]).model.lock_text


# -- the demo ----------------------------------------------------------------------------
def _idx(path: Path, array: np.ndarray) -> None:
    import gzip
    import struct

    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_finetune_demo_end_to_end_on_tiny_data(pretrained, tmp_path, monkeypatch):
    """The demo's whole path (class folder from IDX files, both variants, WiSE-FT curves,
    report) on a few generated images, with the Fashion-MNIST and emoji sets stood in for."""
    from cliplab.data.evalsets import write_classification_set
    from cliplab.demo import finetune as demo

    data = tmp_path / "data"
    idx = data / "sources" / "apt" / "dataset-fashion-mnist" / "usr/share/datasets/fashion-mnist"
    idx.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 4)
    images = (rng.random((40, 28, 28)) * 255 * (labels[:, None, None] + 1) / 10).astype(np.uint8)
    _idx(idx / "train-images-idx3-ubyte.gz", images)
    _idx(idx / "train-labels-idx1-ubyte.gz", labels)
    monkeypatch.setattr(demo, "PER_CLASS", 3)
    for name in (demo.TASK, *demo.SHIFTED):
        write_classification_set(
            data / "eval" / name,
            [(Image.fromarray(images[i]).convert("RGB"), int(labels[i])) for i in range(0, 40, 4)],
            name=name,
            classnames=[f"class {k}" for k in range(10)],
            templates=["a photo of a {}."],
        )
    monkeypatch.setattr(demo, "MAX_STEPS", 2)
    result = demo.run_finetune_demo(data, tmp_path / "out", pretrained, seeds=(0,), steps=2)
    folder = data / demo.FOLDER
    assert sum(1 for _ in folder.rglob("*.png")) == 30  # 3 of each of the 10 classes
    assert {e["variant"] for e in result["table"]} == set(demo.VARIANTS)
    assert [e["alpha"] for e in result["table"]][: len(demo.ALPHAS)] == list(demo.ALPHAS)
    zero = [e for e in result["table"] if e["alpha"] == 0.0]
    assert zero[0]["task"] == zero[1]["task"]  # alpha 0 is the model before fine-tuning
    assert (tmp_path / "out" / "wise-ft.png").stat().st_size > 1000
    assert "locked image" in (tmp_path / "out" / "report.md").read_text()
