"""Training: config loading, the optimiser and schedule, one step in every mode (GradCache,
chunked loss, bf16, fp16 loss scaling, checkpointing, compile), non-finite handling, 2 gloo
processes against one, and ``cliplab train`` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import cliplab
from cliplab.cli import main
from cliplab.models import MAX_LOGIT_SCALE
from cliplab.train import NonFiniteError, Trainer, load_config
from cliplab.train.checkpoint import NonFiniteCheckpointError, check_resume_compatible
from cliplab.train.config import Config
from cliplab.train.distributed import DistEnv
from cliplab.train.optim import AdamW, build_optimizer, param_groups, warmup_cosine
from cliplab.train.parallelize import apply_gradient_checkpointing
from gloo import join_gloo, leave_gloo
from train_helpers import fixed_batch, max_abs_diff, run_steps, tiny_config, tiny_dict

ROOT = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------


def test_toml_config_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text(
        'output = "runs/x"\n[model]\nname = "tiny-rn"\nembed_dim = 48\n[model.text]\nlayers = 1\n'
        '[data]\nbatch_size = 32\n[[data.sources]]\nkind = "synthetic"\nnum_samples = 100\nweight = 2\n'
        '[train]\nsteps = 10\nprecision = "bf16"\n'
    )
    sets = '[{protocol = "zeroshot", dataset = "emoji-google", max_images = 50}]'
    config = load_config(
        path,
        [
            "optim.lr=1e-3",
            "train.steps=20",
            "model.name=tiny-vit",
            f"eval.sets={sets}",
            "activation=gelu",  # a path outside the sections is a model setting, as everywhere
            "text.heads=2",
            "model.vision.patch_dropout=0.25",
        ],
    )
    assert config.output == "runs/x"
    assert config.model.name == "tiny-vit"
    assert config.model.settings == {
        "embed_dim": 48,
        "text.layers": 1,
        "activation": "gelu",
        "text.heads": 2,
        "vision.patch_dropout": 0.25,
    }
    model = config.model.model_config()
    assert model.text.layers == 1 and model.text.heads == 2 and model.vision.patch_dropout == 0.25
    assert config.data.batch_size == 32 and config.data.sources[0].weight == 2
    assert config.optim.lr == 1e-3 and isinstance(config.optim.lr, float)
    assert config.train.steps == 20 and config.train.precision == "bf16"
    assert config.eval.sets == (
        {"protocol": "zeroshot", "dataset": "emoji-google", "max_images": 50},
    )
    assert Config.from_dict(config.to_dict()) == config  # round trip


@pytest.mark.parametrize(
    "override,message",
    [
        ("optim.lrr=1", "did you mean 'lr'"),
        ("optimizer.lr=1", "unknown section 'optimizer'"),
        ("train.precision=fp8", "train.precision must be one of"),
        ("train.steps=ten", "train.steps must be a int"),
        ("model.name=ViT-Z", "unknown model"),
        ("=3", "--set expects KEY=VALUE"),
        ("train", "--set expects KEY=VALUE .KEY a dotted path., got .train."),
        ("train=3", "name a key inside \\[train\\]"),
        ("activation=relu", "activation must be one of"),
        ('eval.sets=[{protocol = "zeroshoot", dataset = "x"}]', "unknown evaluation protocol"),
        ('eval.sets=[{protocol = "zeroshot"}]', "needs dataset"),
        (
            'eval.sets=[{protocol = "zeroshot", dataset = "x", templtes = "photo"}]',
            "did you mean 'templates'",
        ),
        ('data.sources=[{kind = "shards", sets = "x"}]', "did you mean 'set'"),
        ("train.accum_steps=0", "accum_steps must be >= 1"),
        ("vision.widht=3", "did you mean 'vision.width'"),
        ("vision_width=3", "'vision_width' is now 'vision.width'"),
        ("model.overrides.embed_dim=3", "model.overrides is gone"),
        ("data.crop_scale=[0.5, 1]", "data.crop_scale is now data.augment.crop_scale"),
        ("data.augment=false", "data.augment is a table now: data.augment.crop = false"),
        ("train..steps=3", "--set expects KEY=VALUE"),
    ],
)
def test_config_errors_are_clear(override: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_config(None, [override])


def test_every_shipped_config_loads() -> None:
    files = sorted((ROOT / "configs").glob("*.toml"))
    assert files
    for path in files:
        config = load_config(path)
        assert config.output, path


def test_resume_refuses_a_different_run() -> None:
    saved = tiny_config().to_dict()
    assert check_resume_compatible(saved, tiny_config(train={"steps": 9})) == ["train.steps"]
    with pytest.raises(ValueError, match="optim.lr"):
        check_resume_compatible(saved, tiny_config(optim={"lr": 0.5}))


# ---------------------------------------------------------------------------------------
# Optimiser and schedule
# ---------------------------------------------------------------------------------------


def test_weight_decay_only_on_weights() -> None:
    model = cliplab.create_model("tiny-rn")
    decay, no_decay = param_groups(model, 0.2)
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    assert "logit_scale" in no_decay_names
    assert {
        "visual.bn1.weight",
        "visual.attnpool.c_proj.bias",
        "text.ln_final.weight",
    } <= no_decay_names
    assert all(p.ndim >= 2 for p in decay["params"]) and decay["weight_decay"] == 0.2
    assert no_decay["weight_decay"] == 0.0
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_warmup_then_cosine() -> None:
    lrs = [warmup_cosine(s, 10, 110, 0.1) for s in range(111)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)
    assert lrs[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_bf16_state_adamw() -> None:
    torch.manual_seed(0)
    w = torch.randn(16, 8)
    params = [torch.nn.Parameter(w.clone()) for _ in range(3)]
    reference = torch.optim.AdamW(
        [params[0]], lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1, foreach=False
    )
    fp32_state = AdamW(
        [params[1]],
        lr=1e-2,
        betas=(0.9, 0.98),
        eps=1e-6,
        weight_decay=0.1,
        state_dtype=torch.float32,
    )
    bf16_state = AdamW([params[2]], lr=1e-2, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    for _ in range(5):
        g = torch.randn(16, 8)
        for p, opt in zip(params, (reference, fp32_state, bf16_state)):
            p.grad = g.clone()
            opt.step()
    assert torch.equal(params[0], params[1])  # same arithmetic as torch's AdamW
    assert bf16_state.state[params[2]]["exp_avg"].dtype == torch.bfloat16
    assert float((params[0] - params[2]).detach().abs().max()) < 2e-3


def test_optimizer_implementation_choice() -> None:
    model = cliplab.create_model("tiny-vit")
    config = tiny_config()
    for impl, flag in (("foreach", "foreach"), ("loop", "foreach"), ("fused", "fused")):
        opt = build_optimizer(model, config.optim.__class__(impl=impl), "cpu")
        assert isinstance(opt, torch.optim.AdamW)
        assert bool(opt.defaults[flag]) == (impl != "loop"), impl
    opt = build_optimizer(model, config.optim.__class__(state_dtype="bfloat16"), "cpu")
    assert isinstance(opt, AdamW)


# ---------------------------------------------------------------------------------------
# One step in every mode
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["plain", "chunked"])
def test_gradcache_accumulation_matches_one_big_step(loss: str) -> None:
    batch = [fixed_batch(16, seed=1)]
    one = Trainer(tiny_config(train={"loss": loss, "loss_chunk_size": 5}))
    r1, g1 = run_steps(one, batch)
    acc = Trainer(tiny_config(train={"loss": loss, "loss_chunk_size": 5, "accum_steps": 4}))
    r4, g4 = run_steps(acc, batch)
    assert abs(r1[0].loss - r4[0].loss) < 1e-5
    assert max_abs_diff(g1[0], g4[0]) < 1e-5
    assert max_abs_diff(one.model.state_dict(), acc.model.state_dict()) < 1e-5


def test_gradcache_runs_with_batchnorm_and_updates_running_stats_once() -> None:
    trainer = Trainer(tiny_config(model={"name": "tiny-rn"}, train={"accum_steps": 2}))
    bn = trainer.model.visual.bn1
    results, _ = run_steps(trainer, [fixed_batch(16, seed=2, image_size=64)])
    assert math.isfinite(results[0].loss)
    assert int(bn.num_batches_tracked) == 2  # once per micro-batch, by the graph pass only


def test_gradient_checkpointing_keeps_gradients_and_keys() -> None:
    batch = [fixed_batch(8, seed=3)]
    plain = Trainer(tiny_config(data={"batch_size": 8}))
    keys = list(plain.model.state_dict())
    _, g_plain = run_steps(plain, batch)
    ckpt = Trainer(tiny_config(data={"batch_size": 8}, train={"grad_checkpointing": True}))
    _, g_ckpt = run_steps(ckpt, batch)
    assert list(ckpt.model.state_dict()) == keys
    assert max_abs_diff(g_plain[0], g_ckpt[0]) < 1e-6
    assert (
        apply_gradient_checkpointing(cliplab.create_model("tiny-rn")) == 4 + 2
    )  # 4 bottlenecks, 2 text blocks


def test_bf16_autocast_step() -> None:
    trainer = Trainer(tiny_config(data={"batch_size": 8}, train={"precision": "bf16"}))
    results, grads = run_steps(trainer, [fixed_batch(8, seed=4), fixed_batch(8, seed=5)])
    assert all(math.isfinite(r.loss) and r.skipped is None for r in results)
    assert all(g.dtype == torch.float32 for g in grads[0].values())


def test_fp16_loss_scaling_skips_overflow_and_lowers_the_scale() -> None:
    trainer = Trainer(tiny_config(data={"batch_size": 8}, train={"precision": "fp16"}))
    assert trainer.scaler.is_enabled()
    ok = trainer.train_step(*fixed_batch(8, seed=6))
    assert ok.skipped is None and math.isfinite(ok.grad_norm)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.scaler.update(new_scale=2.0**40)  # scaled fp16 gradients overflow
    skipped = trainer.train_step(*fixed_batch(8, seed=7))
    assert skipped.skipped == "overflow" and trainer.counters["overflow_steps"] == 1
    assert trainer.scaler.get_scale() == 2.0**39  # halved
    assert trainer.counters["nonfinite_in_a_row"] == 0  # loss scaling at work, not a failure
    assert max_abs_diff(before, trainer.model.state_dict()) == 0.0
    trainer.scaler.update(new_scale=256.0)
    assert trainer.train_step(*fixed_batch(8, seed=8)).skipped is None


def test_compile_option_runs() -> None:
    trainer = Trainer(
        tiny_config(data={"batch_size": 8}, train={"compile": True, "compile_backend": "eager"})
    )
    assert trainer.model.text.length_groups == 0
    result = trainer.train_step(*fixed_batch(8, seed=9))
    assert math.isfinite(result.loss) and result.skipped is None


def test_logit_scale_is_clamped_at_100() -> None:
    trainer = Trainer(tiny_config(data={"batch_size": 8}))
    with torch.no_grad():
        trainer.model.logit_scale.fill_(math.log(MAX_LOGIT_SCALE) + 1.0)
    trainer.train_step(*fixed_batch(8, seed=10))
    assert float(trainer.model.logit_scale.detach().exp()) <= 100.0 + 1e-4


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(tmp_path: Path) -> None:
    trainer = Trainer(
        tiny_config(data={"batch_size": 8}, train={"max_nonfinite": 3}), output=tmp_path
    )
    good = trainer.train_step(*fixed_batch(8, seed=11))
    assert good.skipped is None
    weights = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    opt_state = {
        k: v["exp_avg"].clone() for k, v in trainer.optimizer.state_dict()["state"].items()
    }
    images, tokens = fixed_batch(8, seed=12)
    images[0, 0, 0, 0] = float("nan")
    for expected in (1, 2):
        result = trainer.train_step(images, tokens)
        assert result.skipped == "nonfinite" and not math.isfinite(result.loss)
        assert trainer.counters["nonfinite_in_a_row"] == expected
    assert max_abs_diff(weights, trainer.model.state_dict()) == 0.0  # never reached the weights
    after = trainer.optimizer.state_dict()["state"]
    assert all(torch.equal(opt_state[k], after[k]["exp_avg"]) for k in opt_state)
    assert (
        trainer.train_step(*fixed_batch(8, seed=13)).skipped is None
    )  # a good step resets the run
    assert trainer.counters["nonfinite_in_a_row"] == 0 and trainer.counters["nonfinite_steps"] == 2
    for _ in range(2):
        trainer.train_step(images, tokens)
    with pytest.raises(NonFiniteError, match="3 consecutive steps"):
        trainer.train_step(images, tokens)
    # a checkpoint never holds a non-finite value
    trainer.save_checkpoint()
    with torch.no_grad():
        trainer.model.text.ln_final.weight[0] = float("inf")
    with pytest.raises(NonFiniteCheckpointError, match="text.ln_final.weight"):
        trainer.save_checkpoint()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [f"step_{trainer.step:08d}.pt"]


# ---------------------------------------------------------------------------------------
# 2 gloo processes with batch B each == 1 process with batch 2B
# ---------------------------------------------------------------------------------------

B = 8
SCENARIOS = {
    "plain": {"loss": "plain"},
    "chunked+gradcache": {"loss": "chunked", "loss_chunk_size": 5, "accum_steps": 2},
    "siglip+gradcache": {"loss": "siglip", "accum_steps": 2},  # the ring; the bias averaged
}
# Adam divides by sqrt(v) + eps: a float-rounding difference d in a near-zero gradient moves a
# weight by up to lr * d / eps. lr 1e-4 keeps that below the 1e-5 tolerance (at 1e-3 the
# weights agree to 2e-5 while losses and gradients agree to 1e-5).
DDP_OPTIM = {"lr": 1e-4}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [fixed_batch(2 * B, seed=100 + k) for k in range(3)]


def _ddp_worker(rank: int, init_file: str, out_file: str) -> None:
    join_gloo(rank, 2, init_file)
    env = DistEnv(rank=rank, world_size=2)
    mine = slice(rank * B, (rank + 1) * B)
    report = {}
    for name, train in SCENARIOS.items():
        config = tiny_config(data={"batch_size": 2 * B}, train=train, optim=DDP_OPTIM)
        trainer = Trainer(config, output=f"{out_file}-{name}", env=env)
        results, grads = run_steps(trainer, [(i[mine], t[mine]) for i, t in _batches()])
        report[name] = {
            "losses": [r.loss for r in results],
            "grads": grads,
            "weights": trainer.model.state_dict(),
        }
        # a checkpoint gathers every rank's RNG and data position; each rank gets its own back
        trainer.loader.positions = {rank: 100 + rank}
        trainer.save_checkpoint()
        resumed = Trainer(config, output=f"{out_file}-{name}", env=env)
        assert resumed.resume() and resumed.step == 3
        assert resumed.loader.positions == {rank: 100 + rank}
        assert max_abs_diff(resumed.model.state_dict(), trainer.model.state_dict()) == 0.0
    torch.save(report, f"{out_file}.{rank}")
    leave_gloo()


def test_two_gloo_processes_equal_one_process_with_the_whole_batch(tmp_path: Path) -> None:
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    ranks = [torch.load(f"{out}.{rank}", weights_only=False) for rank in range(2)]
    for name, train in SCENARIOS.items():
        single = Trainer(
            tiny_config(
                data={"batch_size": 2 * B}, train={**train, "accum_steps": 1}, optim=DDP_OPTIM
            )
        )
        results, grads = run_steps(single, _batches())
        for r in ranks:
            got = r[name]
            assert max(abs(a - b.loss) for a, b in zip(got["losses"], results)) < 1e-5, name
            assert max(max_abs_diff(a, b) for a, b in zip(got["grads"], grads)) < 1e-5, name
            assert max_abs_diff(got["weights"], single.model.state_dict()) < 1e-5, name


# ---------------------------------------------------------------------------------------
# `cliplab train` end to end
# ---------------------------------------------------------------------------------------


def _write_config(path: Path, **sections) -> Path:
    d = tiny_dict(**sections)
    lines = [f'output = "{d.get("output", "")}"']
    for name, table in d.items():
        if name in ("output", "data"):
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    lines.append("[data]")
    lines += [f"{k} = {json.dumps(v)}" for k, v in d["data"].items() if k != "sources"]
    for source in d["data"]["sources"]:
        lines.append("[[data.sources]]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in source.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_main_trains_end_to_end_and_resumes_a_finished_run(tmp_path: Path, capsys) -> None:
    config = _write_config(
        tmp_path / "tiny.toml",
        train={"steps": 6, "threads": 1},
        log={"interval": 2, "tensorboard": True, "plots": True, "progress": True},
        checkpoint={"interval": 4, "keep": 1},
        eval={"interval": 3, "synthetic_pairs": 20},
    )
    out = tmp_path / "run"
    assert main(["train", str(config), "--out", str(out), "--set", "data.batch_size=8"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["status"] == "complete" and summary["step"] == 6
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = summary["eval"]["synthetic_text_to_image_R@1"]
    assert final == [r for r in records if r["kind"] == "eval"][-1]["synthetic_text_to_image_R@1"]
    assert round(final * 20) == final * 20  # a count of the 20 held-out pairs
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    for key in ("loss", "temperature", "lr", "samples_per_s", "data_wait", "peak_mem_mb"):
        assert isinstance(train[-1][key], float), key
    assert [r["step"] for r in records if r["kind"] == "eval"] == [3, 6]
    assert (out / "curves.png").stat().st_size > 0
    assert any((out / "tensorboard").iterdir())
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000006.pt"]  # keep = 1
    model, _ = cliplab.load(out / "model")
    assert model.config == cliplab.get_config("tiny-vit")
    # the same command again: nothing left to do
    assert main(["train", str(config), "--out", str(out), "--set", "data.batch_size=8"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["resumed_from"] == 6
    # a different run in the same directory is refused
    assert main(["train", str(config), "--out", str(out), "--set", "data.batch_size=4"]) == 2
    assert "different configuration (data.batch_size)" in capsys.readouterr().err


def test_main_reports_bad_settings(tmp_path: Path, capsys) -> None:
    assert main(["train", "--out", str(tmp_path), "--set", "optim.warmup=3"]) == 2
    assert "did you mean 'warmup_steps'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.toml"), "--out", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------------------
# Evaluation during training and learning
# ---------------------------------------------------------------------------------------


def test_training_time_retrieval_is_the_retrieval_protocol() -> None:
    """The synthetic evaluator runs `cliplab eval retrieval`'s code on the current weights:
    the same figures as the protocol on the same pairs, and the mode is restored."""
    from cliplab.encode import FeatureStore
    from cliplab.evaluation.registry import get
    from cliplab.evaluation.training import synthetic_retrieval_evaluator
    from cliplab.transforms import EvalTransform

    evaluator = synthetic_retrieval_evaluator(24, batch_size=7)
    model = cliplab.create_model("tiny-vit").train()
    metrics = evaluator(model, step=5)
    assert model.training
    store = FeatureStore(model.eval(), EvalTransform(32), progress=False)
    offline = get("retrieval")(store, dataset=evaluator.inputs["dataset"])
    assert metrics == {f"synthetic_{k}": v for k, v in offline.scalars().items()}
    assert set(metrics) >= {"synthetic_text_to_image_R@1", "synthetic_mean_recall"}


def test_eval_sets_by_name_under_the_data_directory(tmp_path: Path) -> None:
    """[[eval.sets]] name a set under data.dir/eval; a missing one fails before training."""
    from PIL import Image

    from cliplab.data.evalsets import write_classification_set

    names = ["red", "blue"]
    items = [
        (Image.new("RGB", (8, 8), (200 * (i == 0), 0, 200 * (i == 1))), i) for i in (0, 1, 0, 1)
    ]
    write_classification_set(
        tmp_path / "data" / "eval" / "colours", items, name="colours", classnames=names,
        templates=["a {} image"],
    )  # fmt: skip
    config = tiny_config(
        data={"dir": str(tmp_path / "data")},
        train={"steps": 2},
        eval={"interval": 1, "sets": [{"protocol": "zeroshot", "dataset": "colours"}]},
    )
    summary = Trainer(config, output=tmp_path / "run").fit()
    assert set(summary["eval"]) == {
        "zeroshot_colours_top1",
        "zeroshot_colours_top5",
        "zeroshot_colours_mean_per_class_recall",
    }
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [1, 2]
    missing = tiny_config(eval={"sets": [{"protocol": "zeroshot", "dataset": "nope"}]})
    with pytest.raises(FileNotFoundError, match="no evaluation set 'nope'"):
        Trainer(missing, output=tmp_path / "run2")


def test_tiny_model_learns_held_out_synthetic_retrieval(tmp_path: Path) -> None:
    """100 steps of tiny-vit on synthetic shapes: text->image retrieval over 100 held-out
    pairs far above chance (1%). About 10% top-1 and 47% top-5 here; thresholds are loose."""
    calls = []

    def hook(model, step):  # a plug-in evaluator: called on the bare model, in eval mode
        calls.append((step, model.training))
        return {"hook_metric": 1.0}

    config = tiny_config(
        data={
            "batch_size": 64,
            "workers": 1,
            "shuffle_buffer": 256,
            "sources": [{"kind": "synthetic", "num_samples": 20000, "image_size": 32}],
        },
        optim={"lr": 2e-3, "warmup_steps": 10},
        train={"steps": 100, "threads": 1},
        checkpoint={"interval": 1000},
        eval={"interval": 50, "synthetic_pairs": 100},
    )
    summary = Trainer(config, output=tmp_path, evaluators=[hook]).fit()
    metrics = summary["eval"]  # chance: 1% at R@1, 5% at R@5
    assert metrics["synthetic_text_to_image_R@1"] >= 0.04, metrics
    assert metrics["synthetic_text_to_image_R@5"] >= 0.2, metrics
    assert calls == [(50, False), (100, False)] and metrics["hook_metric"] == 1.0
