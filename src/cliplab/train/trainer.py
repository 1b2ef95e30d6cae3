"""The contrastive pre-training loop.

``Trainer(config).fit()`` trains one process or one rank of a ``torchrun`` job:

- a step embeds the rank's batch (in micro-batches with GradCache when
  ``train.accum_steps > 1``), computes the loss against features gathered from every rank,
  back-propagates (DDP averages the encoders' gradients; the logit scale's is averaged by
  hand), checks the loss and gradient norm, and steps AdamW, then clamps ``exp(t)`` at 100;
- fp32, bf16 autocast, or fp16 autocast with dynamic loss scaling; ``auto`` picks bf16 where
  the device has bf16 instructions;
- the CLIP loss (plain or chunked) or SigLIP's sigmoid loss with its learnt bias; a
  low-resolution phase (CLIPA) for ViTs (patch dropout, FLIP, is the model's own setting); a second caption per image
  (``train.second_caption``) contrasted with the image or with the first caption;
- a non-finite loss or gradient skips the step (counted); ``train.max_nonfinite`` in a row
  stop the run with ``NonFiniteError``;
- checkpoints every ``checkpoint.interval`` steps, at the end, and on SIGTERM; a run
  restarted with the same output directory continues from the newest checkpoint, bit for
  bit on deterministic settings;
- logs to JSONL/TensorBoard, evaluates on rank 0, plots the curves and saves the final
  model with ``cliplab.save`` (``OUTPUT/model``).

Why one module: the step, the loop and the run's state (checkpoint, resume, SIGTERM, the
skip counters) all read and write the same ``Trainer`` fields; the parts that stand alone
(GradCache, parallelism, optimiser, logs, evaluation) are already modules of their own.
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cliplab.checkpoints.api import save as save_model
from cliplab.evaluation.training import Evaluator, ProtocolEvaluator, build_evaluators
from cliplab.factory import create_model
from cliplab.fileio import write_json
from cliplab.loss import chunked_clip_loss, distributed_clip_loss, distributed_siglip_loss
from cliplab.models import MAX_LOGIT_SCALE, VisionTransformer
from cliplab.progress import Progress
from cliplab.runtime import cpu_has_bf16
from cliplab.train import checkpoint as ckpt
from cliplab.train import finetune
from cliplab.train.config import Config
from cliplab.train.data import build_loader
from cliplab.train.distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce_sum,
    barrier,
    pick_device,
    rng_state,
    seed_everything,
    set_determinism,
    set_rng_state,
)
from cliplab.train.gradcache import gradcache_backward
from cliplab.train.logs import MetricsLogger, peak_memory_mb, plot_curves
from cliplab.train.optim import build_optimizer, build_scheduler
from cliplab.train.parallelize import full_state_dict, parallelize, sharded_grad_norm, trim_tokens

#: Exit status of a run stopped by SIGTERM after writing its checkpoint (128 + 15, as shells).
INTERRUPTED_EXIT = 143


class NonFiniteError(RuntimeError):
    """Too many consecutive steps had a non-finite loss or gradient."""


@dataclass
class StepResult:
    """What one optimizer step did. ``skipped``: None, ``"nonfinite"`` or ``"overflow"``
    (fp16 loss scaling found an inf and lowered the scale)."""

    loss: float
    grad_norm: float
    lr: float
    skipped: str | None = None
    stop_requested: bool = False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``train.precision`` made concrete: ``auto`` is bf16 on a GPU that supports it and on
    a CPU with bf16 instructions (AVX512-BF16, AMX), fp32 elsewhere."""
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_bf16() else "fp32"
    return "fp32"


def _check_vit_levers(config: Config, model: torch.nn.Module) -> None:
    tc = config.train
    visual = model.visual
    if tc.low_res_size and not isinstance(visual, VisionTransformer):
        raise ValueError(
            f"train.low_res_size needs a ViT image tower; {config.model.name} has a ResNet"
        )
    if tc.low_res_size:
        patch, size = visual.config.patch_size, visual.image_size
        if tc.low_res_size % patch or tc.low_res_size >= size:
            raise ValueError(
                f"train.low_res_size must be a multiple of the patch size {patch} below the "
                f"model's image size {size}; got {tc.low_res_size}"
            )


def _config_evaluators(
    config: Config, image_size: int, preprocess: dict[str, Any]
) -> list[Evaluator]:
    """The evaluators ``[eval]`` asks for (the synthetic pairs drawn at the synthetic
    source's image size; a pretrained model's own normalisation)."""
    from cliplab.data.sources import ClassesSpec, SyntheticSpec
    from cliplab.transforms import EvalTransform

    synthetic = [s for s in config.data.sources if isinstance(s, SyntheticSpec)]
    transform = EvalTransform(image_size, **preprocess) if preprocess else None
    evaluators = build_evaluators(
        config.eval.sets,
        config.data.dir,
        config.eval.batch_size,
        synthetic_pairs=config.eval.synthetic_pairs,
        synthetic_image_size=synthetic[0].image_size if synthetic else 64,
        transform=transform,
    )
    for spec in config.data.sources:  # a labelled source's held-out split, zero-shot
        if isinstance(spec, ClassesSpec) and spec.split == "train" and spec.evaluate:
            held_out = spec.open().classification_set("val")  # type: ignore[attr-defined]
            evaluators.append(
                ProtocolEvaluator(
                    "zeroshot",
                    {"dataset": held_out},
                    batch_size=config.eval.batch_size,
                    transform=transform,
                )
            )
    return evaluators


class Trainer:
    """One process's share of a training run (see the module docstring)."""

    def __init__(
        self,
        config: Config,
        output: str | Path | None = None,
        env: DistEnv | None = None,
        evaluators: Sequence[Evaluator] = (),
    ) -> None:
        self.config = config
        self.env = env or DistEnv(device=pick_device(config.train.device))
        self.output = Path(output or config.output or ".")
        tc = config.train
        set_determinism(tc.deterministic, tc.threads)
        self.per_rank_batch, self.micro_batch = config.batch_split(self.env.world_size)
        device = self.env.device

        self.precision = resolve_precision(tc.precision, device)
        torch.manual_seed(tc.seed)  # the same initial weights on every rank
        resuming = bool(ckpt.list_checkpoints(self.output))
        model, self.preprocess = finetune.run_model(
            config.model, self.output, resuming, self.env.is_main
        )
        self.model = model.to(device)
        self.frozen = finetune.lock_towers(self.model, config.model)
        if tc.ema_decay and self.env.distributed and tc.parallelism == "fsdp":
            raise ValueError('train.ema_decay does not yet combine with train.parallelism = "fsdp"')
        if tc.loss == "siglip" and not hasattr(self.model, "logit_bias"):
            raise ValueError('train.loss = "siglip" needs a model with a logit bias')
        _check_vit_levers(config, self.model)
        self.model.train()
        seed_everything(tc.seed, self.env.rank)
        self.fsdp = self.env.distributed and tc.parallelism == "fsdp"
        self.plain_towers, self.towers = parallelize(
            self.model, tc, self.env.distributed, device, self.precision
        )

        self.loader = build_loader(
            config,
            self.model.image_size,
            self.model.context_length,
            self.per_rank_batch,
            self.env.rank,
            self.env.world_size,
            pin_memory=device.type == "cuda",
            model_config=self.model.config,
            preprocess=self.preprocess,
        )
        self.total_steps = math.ceil(tc.epochs * len(self.loader)) if tc.epochs > 0 else tc.steps
        self.optimizer = build_optimizer(self.model, config.optim, device.type)
        self.average = finetune.WeightAverage(self.model, tc.ema_decay) if tc.ema_decay else None
        self.scheduler = build_scheduler(self.optimizer, config.optim, self.total_steps)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        self.low_res_steps = round(tc.low_res_until * self.total_steps) if tc.low_res_size else 0
        # the config's evaluators (built now, so a missing set fails before training) + those given
        self.evaluators: list[Evaluator] = (
            _config_evaluators(config, self.model.image_size, self.preprocess) + list(evaluators)
            if self.env.is_main
            else []
        )
        self.step = 0
        self.counters = {"nonfinite_steps": 0, "nonfinite_in_a_row": 0, "overflow_steps": 0}
        self._stop_signal: int | None = None

    # -- one step --------------------------------------------------------------------------
    def _autocast(self) -> contextlib.AbstractContextManager:
        precision = self.precision
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)
        return torch.autocast(self.env.device.type, dtype=dtype, enabled=precision != "fp32")

    def feature_loss(
        self, image_features: torch.Tensor, text_features: torch.Tensor
    ) -> torch.Tensor:
        """This rank's loss from unnormalised features (normalised here, in fp32)."""
        image_features = F.normalize(image_features.float(), dim=-1)
        text_features = F.normalize(text_features.float(), dim=-1)
        scale = self.model.logit_scale.exp()
        if self.config.train.loss == "siglip":
            return distributed_siglip_loss(
                image_features, text_features, scale, self.model.logit_bias
            )
        if self.config.train.loss == "chunked":
            return chunked_clip_loss(
                image_features, text_features, scale, self.config.train.loss_chunk_size
            )
        return distributed_clip_loss(image_features, text_features, scale)

    def caption_loss(
        self, image_features: torch.Tensor, text_features: torch.Tensor
    ) -> torch.Tensor:
        """:meth:`feature_loss`, or with twice as many captions as images (the second of each
        image after the first ones: ``train.second_caption``) the mean of the image against
        its first caption and the second against the image ("image") or the first ("text":
        the two captions are each other's match, so their languages align)."""
        b = image_features.shape[0]
        if text_features.shape[0] == b:
            return self.feature_loss(image_features, text_features)
        first, other = text_features[:b], text_features[b:]
        if self.config.train.second_caption == "image":
            pair = self.feature_loss(image_features, other)
        else:  # "text"
            pair = self.feature_loss(other, first)
        return (self.feature_loss(image_features, first) + pair) / 2

    def _backward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        accum = self.config.train.accum_steps
        if accum == 1:
            with self._autocast():
                image_features, text_features = self.towers(images, tokens)
            loss = self.caption_loss(image_features, text_features)
            self.scaler.scale(loss).backward()
            return loss.detach()
        no_sync = getattr(self.towers, "no_sync", contextlib.nullcontext)
        return gradcache_backward(
            self.towers,
            self.plain_towers,
            images,
            tokens,
            accum,
            self.feature_loss,
            self._autocast,
            scale_loss=self.scaler.scale,
            no_sync=no_sync,
        )

    def _grad_norm(self) -> torch.Tensor:
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.config.optim.grad_clip_norm
        if self.fsdp:
            return sharded_grad_norm(params, clip)
        if clip > 0:
            return torch.nn.utils.clip_grad_norm_(params, clip)
        return torch.nn.utils.get_total_norm([p.grad for p in params])

    def train_step(
        self, images: torch.Tensor, tokens: torch.Tensor, second: torch.Tensor | None = None
    ) -> StepResult:
        """One optimizer step on this rank's batch (every rank calls it together); ``second``:
        a second caption per image (``train.second_caption``)."""
        device = self.env.device
        images = images.to(device, non_blocking=True)
        tokens = tokens.to(device, non_blocking=True)
        if second is not None:  # both captions through the text tower in one pass
            tokens = torch.cat([tokens, second.to(device, non_blocking=True)])
        if self.step < self.low_res_steps:  # CLIPA's low-resolution phase
            size = self.config.train.low_res_size
            images = F.interpolate(
                images, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
        text = self.model.config.text  # padding is cut only where it cannot matter
        exact = getattr(text, "causal", False) and getattr(text, "pool", "") == "argmax"
        tokens = trim_tokens(tokens, compiled=self.config.train.compile, exact=exact)
        lr = self.optimizer.param_groups[0]["lr"]
        local_loss = self._backward(images, tokens)
        world = self.env.world_size
        for name in ("logit_scale", "logit_bias"):  # not under DDP: averaged here
            param = getattr(self.model, name, None)
            if world > 1 and param is not None and param.grad is not None:
                all_reduce_sum(param.grad).div_(world)
        # the global loss (mean over ranks) and whether any rank was asked to stop
        shared = torch.stack(
            [local_loss.float(), torch.tensor(float(self._stop_signal is not None), device=device)]
        )
        all_reduce_sum(shared)
        loss, stop = float(shared[0]) / world, bool(shared[1] > 0)
        self.scaler.unscale_(self.optimizer)
        grad_norm = float(self._grad_norm())
        skipped = self._apply_update(loss, grad_norm)
        self.optimizer.zero_grad(set_to_none=True)
        with (
            warnings.catch_warnings()
        ):  # "scheduler.step() before optimizer.step()" on a skipped first step
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()
        self.step += 1
        limit = self.config.train.max_nonfinite
        if self.counters["nonfinite_in_a_row"] >= limit:
            raise NonFiniteError(
                f"{limit} consecutive steps had a non-finite loss or gradient (step {self.step}: "
                f"loss {loss}, gradient norm {grad_norm}); stopping. The weights were never updated "
                "with them and checkpoints hold only finite values. Try a lower optim.lr, "
                'optim.grad_clip_norm, more optim.warmup_steps, or train.precision = "bf16"/"fp32".'
            )
        return StepResult(loss, grad_norm, lr, skipped, stop)

    def _apply_update(self, loss: float, grad_norm: float) -> str | None:
        """Step the optimizer unless the step must be skipped; returns the skip reason."""
        scaling = self.scaler.is_enabled()
        overflow = scaling and not math.isfinite(grad_norm) and self.scaler.get_scale() > 1.0
        if math.isfinite(loss) and overflow:  # fp16 loss scaling: lower the scale, skip
            self.scaler.step(self.optimizer)  # skips: an inf was found when unscaling
            self.scaler.update()
            self.counters["overflow_steps"] += 1
            return "overflow"
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            if scaling:
                self.scaler.update()  # consumes this step's inf checks; lowers the scale if any
            self.counters["nonfinite_steps"] += 1
            self.counters["nonfinite_in_a_row"] += 1
            return "nonfinite"
        if scaling:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        with torch.no_grad():  # exp(t) <= 100
            self.model.logit_scale.clamp_(0, math.log(MAX_LOGIT_SCALE))
        if self.average is not None:
            self.average.update(self.model)
        self.counters["nonfinite_in_a_row"] = 0
        return None

    # -- state -----------------------------------------------------------------------------
    def state_dict(self, include_weights: bool = True) -> dict[str, Any]:
        """Everything needed to continue exactly (every rank's RNG and data position too).
        ``include_weights=False``: all but the model and optimiser (a sharded checkpoint
        writes those itself)."""
        per_rank = all_gather_objects({"rng": rng_state(), "data": self.loader.state_dict()})
        weights = (
            {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
            if include_weights
            else {}
        )
        average = {"ema": self.average.state_dict()} if self.average is not None else {}
        return {
            **weights,
            **average,
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "counters": dict(self.counters),
            "ranks": per_rank,
            "world_size": self.env.world_size,
            "config": self.config.to_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["world_size"] != self.env.world_size:
            raise ValueError(
                f"the checkpoint was written by {state['world_size']} processes and this run has "
                f"{self.env.world_size}; exact resumption needs the same number"
            )
        if state.get("sharded"):  # FSDP's folder: into FSDP, DDP or one process alike
            ckpt.load_sharded_train_state(Path(state["path"]), self.model, self.optimizer)
        else:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        if self.average is not None:
            if "ema" not in state:
                raise ValueError("the checkpoint has no weight average (train.ema_decay was 0)")
            self.average.load_state_dict(state["ema"])
        self.scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.counters.update(state["counters"])
        self.step = int(state["step"])
        mine = state["ranks"][self.env.rank]
        self.loader.load_state_dict(mine["data"])
        set_rng_state(mine["rng"])

    def save_checkpoint(self) -> Path | None:
        state = self.state_dict(include_weights=not self.fsdp)  # collective
        if self.fsdp:  # every rank writes its shards of the model and optimiser
            keep, main = self.config.checkpoint.keep, self.env.is_main
            return ckpt.save_sharded_train_state(
                self.output, self.step, self.model, self.optimizer, state, keep, main
            )
        path = None
        if self.env.is_main:
            path = ckpt.save_train_state(self.output, self.step, state, self.config.checkpoint.keep)
        barrier()
        return path

    def resume(self) -> bool:
        """Continue from the newest checkpoint in the output directory, if there is one."""
        if self.env.is_main:
            ckpt.remove_partial_writes(self.output)
        barrier()
        state = ckpt.load_latest(self.output)
        if state is None:
            return False
        changed = ckpt.check_resume_compatible(state["config"], self.config)
        if changed and self.env.is_main:
            print(f"resuming with changed settings: {', '.join(changed)}", file=sys.stderr)
        self.load_state_dict(state)
        return True

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Run every evaluator on rank 0 (the others wait; under FSDP they first help gather
        the weights); returns the merged metrics."""
        results: dict[str, float] = {}
        wanted = torch.tensor(float(len(self.evaluators)))  # only rank 0 has evaluators
        if all_reduce_sum(wanted).item():
            model = self.gathered_model()  # collective under FSDP
            if model is not None:
                model.eval()
                try:
                    with torch.no_grad():
                        for evaluator in self.evaluators:
                            results.update(evaluator(model, self.step))
                        average = self.averaged_model()
                        for evaluator in self.evaluators if average is not None else ():
                            scores = evaluator(average, self.step)
                            results.update({f"ema_{k}": v for k, v in scores.items()})
                finally:
                    model.train()
        barrier()
        return results

    def gathered_model(self) -> torch.nn.Module | None:
        """The whole model as a plain module on rank 0 (None elsewhere); collective under
        FSDP (the shards are gathered into a fresh copy), ``self.model`` otherwise."""
        if not self.fsdp:
            return self.model if self.env.is_main else None
        state = full_state_dict(self.model)
        if not self.env.is_main:
            return None
        plain = create_model(self.config.model.model_config())
        plain.load_state_dict(state)
        return plain

    def averaged_model(self) -> torch.nn.Module | None:
        """A plain copy of the model with the moving-average weights (None without one)."""
        if self.average is None:
            return None
        copy = create_model(self.model.config)
        return self.average.copy_into(copy).to(self.env.device).eval()

    # -- the loop --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _sigterm_checkpoints(self) -> Iterator[None]:
        """SIGTERM (preemption) sets a flag; the loop checkpoints and stops after the step."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum: int, frame: Any) -> None:
            self._stop_signal = signum

        previous = signal.signal(signal.SIGTERM, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _step_metrics(self, result: StepResult, seconds: float, waited: float) -> dict[str, Any]:
        scale = float(self.model.logit_scale.detach().exp())
        bias = getattr(self.model, "logit_bias", None)
        extra = {"logit_bias": float(bias.detach())} if bias is not None else {}
        return {
            **extra,
            "loss": result.loss,
            "logit_scale": scale,
            "temperature": 1.0 / scale,
            "lr": result.lr,
            "grad_norm": result.grad_norm,
            "samples_per_s": self.config.data.batch_size / max(seconds, 1e-9),
            "data_wait": waited / max(seconds, 1e-9),
            "peak_mem_mb": peak_memory_mb(self.env.device),
            "epoch": self.loader.epoch,
            "skipped": result.skipped or "",
            **self.counters,
        }

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps`` (resuming if possible); returns a summary whose
        ``status`` is ``"complete"`` or ``"interrupted"`` (SIGTERM)."""
        out, main = self.output, self.env.is_main
        if main:
            out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()
        if main:  # the settings of this run, for people (the checkpoints carry their own copy)
            write_json(out / "config.json", self.config.to_dict())
        logger = MetricsLogger(
            out, enabled=main, tensorboard=self.config.log.tensorboard, resume_step=self.step
        )
        progress = Progress(
            self.total_steps,
            desc="training",
            unit="step",
            initial=self.step,
            enabled=main and self.config.log.progress,
        )
        if resumed:
            progress.write(f"resumed from the checkpoint of step {self.step}")
        summary: dict[str, Any] = {
            "status": "complete",
            "precision": self.precision,
            "resumed_from": self.step if resumed else None,
        }
        already_done = resumed and self.step >= self.total_steps
        if self.config.model.pretrained and self.step == 0:  # what fine-tuning starts from
            before = self.evaluate()
            if before:
                logger.log("eval", 0, before)
                summary["eval_before"] = before
        started = time.perf_counter()
        try:
            with self._sigterm_checkpoints():
                summary.update(self._loop(logger, progress))
            summary["steps_per_s"] = (self.step - (summary["resumed_from"] or 0)) / (
                time.perf_counter() - started
            )
            if already_done:
                progress.write(f"the run in {out} is already complete ({self.step} steps)")
                final = self.gathered_model()
                if main and not (out / "model").exists():
                    save_model(final, out / "model", self.preprocess)
            elif summary["status"] == "complete":
                summary["eval"] = self._finish(logger)
        finally:
            logger.close()
            progress.close()
        summary.update(step=self.step, total_steps=self.total_steps, **self.counters)
        return summary

    def _loop(self, logger: MetricsLogger, progress: Progress) -> dict[str, Any]:
        cfg = self.config
        batches = iter(self.loader)
        last: dict[str, Any] = {}
        window_start, window_steps, waited = time.perf_counter(), 0, 0.0
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - t0
            result = self.train_step(batch.images, batch.tokens, batch.second_tokens)
            window_steps += 1
            if result.skipped == "nonfinite":
                progress.write(f"step {self.step}: non-finite loss or gradient, update skipped")
            if self.step % cfg.log.interval == 0 or self.step == self.total_steps:
                now = time.perf_counter()
                seconds = (now - window_start) / window_steps
                last = self._step_metrics(result, seconds, waited / window_steps)
                logger.log("train", self.step, last)
                window_start, window_steps, waited = now, 0, 0.0
            shown = {"loss": result.loss, "lr": result.lr, **last}
            progress.update(1, {k: shown[k] for k in ("loss", "lr", "samples_per_s") if k in shown})
            if (
                cfg.eval.interval
                and self.step % cfg.eval.interval == 0
                and self.step < self.total_steps
            ):
                logger.log("eval", self.step, self.evaluate())
            if result.stop_requested:
                self.save_checkpoint()
                progress.write(
                    f"stopped by a signal at step {self.step}; checkpoint saved, re-run to resume"
                )
                return {"status": "interrupted"}
            if self.step % cfg.checkpoint.interval == 0 and self.step < self.total_steps:
                self.save_checkpoint()
        return {"status": "complete", "last": last}

    def _finish(self, logger: MetricsLogger) -> dict[str, float]:
        """The end of a run: final evaluation, checkpoint, model, plots."""
        results = self.evaluate()
        if results:
            logger.log("eval", self.step, results)
        if not ckpt.has_checkpoint(self.output, self.step):
            self.save_checkpoint()
        final = self.gathered_model()  # collective under FSDP
        if self.env.is_main:
            save_model(final, self.output / "model", self.preprocess)
            average = self.averaged_model()
            if average is not None:
                save_model(average, self.output / "model-ema", self.preprocess)
            logger.close()
            if self.config.log.plots:
                plot_curves(self.output / "metrics.jsonl", self.output / "curves.png")
        barrier()
        return results
