"""Training levers and speed paths: patch dropout (against OpenCLIP's), any input size with
resampled positions (against OpenCLIP's ``resize_pos_embed``), the low-resolution phase,
SigLIP's loss in the trainer, ``precision = "auto"``, and torch.compile with the inductor
backend really run on the CPU, alone and under DDP on 2 gloo processes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import cliplab
import refs
from cliplab.checkpoints import openai
from cliplab.config import CLIPConfig, TextConfig, ViTConfig
from cliplab.models import CLIP
from cliplab.models.vit import drop_patches, resample_positions
from cliplab.runtime import cpu_has_bf16
from cliplab.train import Trainer
from cliplab.train.distributed import DistEnv
from cliplab.train.trainer import resolve_precision
from gloo import join_gloo, leave_gloo
from train_helpers import fixed_batch, max_abs_diff, run_steps, tiny_config


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _openclip_pair(image_size: int = 32, patch_dropout: float = 0.0) -> tuple[CLIP, object]:
    """A perturbed OpenCLIP ViT and cliplab's copy of it (same weights)."""
    oc = refs.open_clip()
    vision_cfg = {
        "image_size": image_size,
        "layers": 2,
        "width": 64,
        "patch_size": 8,
        "head_width": 32,
        "patch_dropout": patch_dropout,
    }
    text_cfg = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}
    ref = refs.perturb_(oc.model.CLIP(32, vision_cfg, text_cfg, quick_gelu=True), seed=3)
    vision = ViTConfig(
        image_size=image_size,
        patch_size=8,
        width=64,
        layers=2,
        heads=2,
        patch_dropout=patch_dropout,
    )
    config = CLIPConfig(embed_dim=32, vision=vision, text=TextConfig(width=64, heads=2, layers=2))
    ours = CLIP(config)
    ours.load_state_dict(openai.from_openai(ref.state_dict()))
    return ours, ref


# -- patch dropout ---------------------------------------------------------------------------


def test_patch_dropout_equals_open_clips_for_the_same_seed() -> None:
    ours, ref = _openclip_pair(patch_dropout=0.5)  # a model setting (vision.patch_dropout)
    ours.train()
    ref.train()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.manual_seed(7)
        got = ours.encode_image(images)
        torch.manual_seed(7)
        want = ref.encode_image(images)
        torch.manual_seed(8)
        other = ours.encode_image(images)
        ours.eval()
        ref.eval()
        full = ours.encode_image(images)
        assert relative_error(full, ref.encode_image(images)) < 1e-5  # off in eval mode
    assert relative_error(got, want) < 1e-5
    assert relative_error(other, got) > 1e-3  # another seed keeps other patches
    assert relative_error(full, got) > 1e-3  # dropping patches changes the features


def test_drop_patches_keeps_the_class_token_and_distinct_patches() -> None:
    x = torch.arange(2 * 17, dtype=torch.float32).reshape(2, 17, 1).expand(-1, -1, 4)
    torch.manual_seed(0)
    y = drop_patches(x, 0.75)
    assert y.shape == (2, 1 + 4, 4)  # int(16 * 0.25) patches + the class token
    for b in range(2):
        assert y[b, 0, 0] == x[b, 0, 0]  # the class token, first
        kept = y[b, 1:, 0].tolist()
        assert len(set(kept)) == 4 and x[b, 0, 0] not in kept
        assert all(x[b, 1, 0] <= k <= x[b, 16, 0] for k in kept)  # patches of this image


def test_patch_dropout_is_a_model_setting_for_training_only(tmp_path) -> None:
    trainer = Trainer(tiny_config(data={"batch_size": 8}, model={"vision": {"patch_dropout": 0.5}}))
    seen: list[int] = []
    hook = trainer.model.visual.transformer.register_forward_pre_hook(
        lambda m, args, kwargs=None: seen.append(args[0].shape[1])
    )
    result = trainer.train_step(*fixed_batch(8, seed=1))
    assert math.isfinite(result.loss)
    trainer.evaluate()
    trainer.model.eval()
    with torch.no_grad():
        trainer.model.encode_image(torch.randn(2, 3, 32, 32))
    hook.remove()
    assert seen[0] == 1 + 8 and seen[-1] == 1 + 16  # 16 patches: 8 kept in training
    cliplab.save(trainer.model, tmp_path / "model")  # the saved model says how it trained
    assert cliplab.load(tmp_path / "model")[0].config.vision.patch_dropout == 0.5
    with pytest.raises(ValueError, match="unknown model setting 'vision.patch_dropout'"):
        tiny_config(model={"name": "tiny-rn", "vision": {"patch_dropout": 0.5}})
    with pytest.raises(ValueError, match="train.patch_dropout is now model.vision.patch_dropout"):
        tiny_config(train={"patch_dropout": 0.5})


# -- any input size, and the low-resolution phase --------------------------------------------


def test_other_input_sizes_match_open_clips_resized_positions() -> None:
    """cliplab at 48 px with its 32-px weights == OpenCLIP built for 48 px, loaded with
    ``resize_pos_embed`` (bicubic, antialiased) from the same weights; 16 px (downsampling)."""
    oc = refs.open_clip()
    ours, ref32 = _openclip_pair(image_size=32)
    ours.eval()
    for size in (48, 16):
        _, ref = _openclip_pair(image_size=size)
        state = ref32.state_dict()
        oc.model.resize_pos_embed(state, ref)
        ref.load_state_dict(state)
        ref.eval()
        images = torch.randn(3, 3, size, size)
        with torch.no_grad():
            assert relative_error(ours.encode_image(images), ref.encode_image(images)) < 1e-5
    positions = ours.visual.positional_embedding
    assert resample_positions(positions, 4, 4) is positions  # native size: untouched


def test_low_resolution_phase_then_full_size() -> None:
    trainer = Trainer(
        tiny_config(
            data={"batch_size": 8}, train={"steps": 4, "low_res_size": 16, "low_res_until": 0.5}
        )
    )
    sizes: list[int] = []
    hook = trainer.model.visual.register_forward_pre_hook(
        lambda m, args: sizes.append(args[0].shape[-1])
    )
    results, _ = run_steps(trainer, [fixed_batch(8, seed=k) for k in range(4)])
    hook.remove()
    assert sizes == [16, 16, 32, 32]
    assert all(math.isfinite(r.loss) for r in results)
    for bad, message in ((12, "multiple of the patch size"), (32, "below the model's")):
        with pytest.raises(ValueError, match=message):
            Trainer(tiny_config(train={"low_res_size": bad}))


# -- SigLIP in the trainer -------------------------------------------------------------------


def test_siglip_training_learns_its_bias_and_saves_it(tmp_path: Path) -> None:
    config = tiny_config(data={"batch_size": 16}, train={"loss": "siglip", "steps": 6})
    trainer = Trainer(config, output=tmp_path)
    assert float(trainer.model.logit_bias.detach()) == -10.0
    assert float(trainer.model.logit_scale.exp()) == pytest.approx(10.0)
    results, grads = run_steps(trainer, [fixed_batch(16, seed=k) for k in range(6)])
    assert all(math.isfinite(r.loss) for r in results)
    assert all(float(g["logit_bias"]) != 0 for g in grads)
    assert float(trainer.model.logit_bias.detach()) != -10.0
    cliplab.save(trainer.model, tmp_path / "model")
    loaded, _ = cliplab.load(str(tmp_path / "model"))
    assert float(loaded.logit_bias.detach()) == float(trainer.model.logit_bias.detach())
    with torch.no_grad():  # logits carry the bias
        images, tokens = fixed_batch(2, seed=9)
        loaded.eval()
        logits, _ = loaded(images, tokens)
        i = loaded.encode_image(images, normalize=True)
        t = loaded.encode_text(tokens, normalize=True)
        expected = loaded.logit_scale.exp() * i @ t.t() + loaded.logit_bias
        assert torch.allclose(logits, expected, atol=1e-5)


# -- precision = "auto" ----------------------------------------------------------------------


def test_auto_precision_follows_the_cpu() -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    has = any(f in flags.split() for f in ("avx512_bf16", "amx_bf16"))
    if flags:
        assert cpu_has_bf16() == has
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_bf16() else "fp32")
    assert resolve_precision("fp16", cpu) == "fp16"
    trainer = Trainer(tiny_config(data={"batch_size": 8}, train={"precision": "auto"}))
    assert trainer.precision == resolve_precision("auto", cpu)
    assert math.isfinite(trainer.train_step(*fixed_batch(8, seed=2)).loss)


# -- torch.compile with inductor -------------------------------------------------------------


def test_inductor_compiled_training_equals_eager() -> None:
    batches = [fixed_batch(8, seed=20), fixed_batch(8, seed=21)]
    eager = Trainer(tiny_config(data={"batch_size": 8}))
    r_eager, g_eager = run_steps(eager, batches)
    compiled = Trainer(tiny_config(data={"batch_size": 8}, train={"compile": True}))
    r_comp, g_comp = run_steps(compiled, batches)
    assert compiled.config.train.compile_backend == "inductor"
    assert max(abs(a.loss - b.loss) for a, b in zip(r_eager, r_comp)) < 1e-4
    assert max(max_abs_diff(a, b) for a, b in zip(g_eager, g_comp)) < 1e-4


B = 4


def _compiled_ddp_worker(rank: int, init_file: str, out_file: str) -> None:
    join_gloo(rank, 2, init_file)
    torch.set_num_threads(1)
    config = tiny_config(data={"batch_size": 2 * B}, train={"compile": True}, optim={"lr": 1e-4})
    trainer = Trainer(config, output=f"{out_file}-run", env=DistEnv(rank=rank, world_size=2))
    mine = slice(rank * B, (rank + 1) * B)
    batches = [fixed_batch(2 * B, seed=30 + k) for k in range(2)]
    results, grads = run_steps(trainer, [(i[mine], t[mine]) for i, t in batches])
    torch.save({"losses": [r.loss for r in results], "grads": grads}, f"{out_file}.{rank}")
    leave_gloo()


def test_compile_then_ddp_on_two_gloo_processes_equals_one_eager_process(tmp_path) -> None:
    out = tmp_path / "ddp.pt"
    mp.spawn(_compiled_ddp_worker, args=(str(tmp_path / "init"), str(out)), nprocs=2)
    single = Trainer(tiny_config(data={"batch_size": 2 * B}, optim={"lr": 1e-4}))
    results, grads = run_steps(single, [fixed_batch(2 * B, seed=30 + k) for k in range(2)])
    for rank in range(2):
        got = torch.load(f"{out}.{rank}", weights_only=False)
        assert max(abs(a - b.loss) for a, b in zip(got["losses"], results)) < 1e-4
        assert max(max_abs_diff(a, b) for a, b in zip(got["grads"], grads)) < 1e-4
