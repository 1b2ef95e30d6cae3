"""The scratch harness behind the demo recipe's ablations (see the issue-6 note / README).

A minimal loop outside the trainer (in-memory data, batched crops and colour augmentation,
captions from the shards' metadata, AdamW + warm-up/cosine, zero-shot on built eval sets at
the end), so that many variants can be compared at a fixed number of steps. It needs built
shards (``make demo`` or ``cliplab data build``). Its models use QuickGELU (the demo's use
GELU); its figures compare variants with each other, the demo's own are in the README.

    python benchmarks/recipe_harness.py --steps 300 --sources emoji-twitter,emoji-twitter-skins \
        --jitter 0.3 --gray 0.2 --blur 0.3 --threads 1
"""

import argparse
import glob
import io
import json
import math
import random
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import cliplab
from cliplab.config import CLIPConfig, ResNetConfig, TextConfig, ViTConfig
from cliplab.data.stream import RawSample
from cliplab.datasets.captions import draw_caption
from cliplab.loss import clip_loss

ROOT = Path("data")
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


def rgb_on_white(im, size):
    im = im.convert("RGBA")
    bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
    bg.alpha_composite(im)
    im = bg.convert("RGB")
    w, h = im.size
    s = size / min(w, h)
    im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BICUBIC)
    w, h = im.size
    left, top = (w - size) // 2, (h - size) // 2
    return np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)


def load_shards(name, size, cache):
    f = Path(cache) / f"{name}-{size}.npz"
    if f.exists():
        d = np.load(f, allow_pickle=False)
        return d["x"], json.loads(str(d["meta"]))
    xs, metas = [], []
    for tar in sorted(glob.glob(str(ROOT / "shards" / name / "*.tar"))):
        t = tarfile.open(tar)  # noqa: SIM115 (read fully below, closed at exit)
        members = {}
        for m in t.getmembers():
            key, ext = m.name.split(".", 1)
            members.setdefault(key, {})[ext] = t.extractfile(m).read()
        for mem in members.values():
            img = next((mem[e] for e in ("png", "jpg", "jpeg", "webp") if e in mem), None)
            if img is None or "json" not in mem:
                continue
            try:
                xs.append(rgb_on_white(Image.open(io.BytesIO(img)), size))
            except Exception:
                continue
            metas.append(mem["json"].decode())
    x = np.stack(xs)
    np.savez(f, x=x, meta=json.dumps(metas))
    return x, metas


def load_evalset(name, size, cache):
    f = Path(cache) / f"eval-{name}-{size}.npz"
    root = ROOT / "eval" / name
    classes = json.loads((root / "classes.json").read_text())
    templates = json.loads((root / "templates.json").read_text())["templates"]
    if f.exists():
        d = np.load(f)
        return d["x"], d["y"], classes, templates
    rows = [json.loads(x) for x in (root / "index.jsonl").read_text().splitlines() if x.strip()]
    x = np.stack([rgb_on_white(Image.open(root / r["file"]), size) for r in rows])
    y = np.array([r["label"] for r in rows])
    np.savez(f, x=x, y=y)
    return x, y, classes, templates


def to_input(x_uint8):
    return (torch.from_numpy(x_uint8).permute(0, 3, 1, 2).float() / 255 - MEAN) / STD


def augment(x, g, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)):
    """Batched random resized crop with grid_sample (bilinear); x (B,3,S,S) normalised."""
    B = x.shape[0]
    area = torch.empty(B).uniform_(*scale, generator=g)
    logr = torch.empty(B).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)
    r = torch.exp(logr)
    w = torch.sqrt(area * r).clamp(max=1.0)
    h = torch.sqrt(area / r).clamp(max=1.0)
    cx = (torch.rand(B, generator=g) * 2 - 1) * (1 - w)
    cy = (torch.rand(B, generator=g) * 2 - 1) * (1 - h)
    theta = torch.zeros(B, 2, 3)
    theta[:, 0, 0] = w
    theta[:, 1, 1] = h
    theta[:, 0, 2] = cx
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    white = (1 - MEAN) / STD
    return (
        F.grid_sample(x - white, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        + white
    )


def color_aug(x, g, jitter, gray, blur):
    B = x.shape[0]
    img = x * STD + MEAN  # back to [0,1]
    if jitter:
        b = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * jitter
        c = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * jitter
        s = 1 + (torch.rand(B, 1, 1, 1, generator=g) * 2 - 1) * jitter
        img = img * b
        m = img.mean(dim=(1, 2, 3), keepdim=True)
        img = (img - m) * c + m
        gr = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        img = (img - gr) * s + gr
    if gray:
        mask = (torch.rand(B, 1, 1, 1, generator=g) < gray).float()
        gr = (img * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        img = mask * gr.expand_as(img) + (1 - mask) * img
    if blur:
        mask = (torch.rand(B, 1, 1, 1, generator=g) < blur).float()
        k = torch.tensor([1.0, 2.0, 1.0])
        k = (k[:, None] * k[None, :]) / 16
        bl = F.conv2d(
            F.pad(img, (1, 1, 1, 1), mode="replicate"),
            k.view(1, 1, 3, 3).repeat(3, 1, 1, 1),
            groups=3,
        )
        img = mask * bl + (1 - mask) * img
    return (img.clamp(0, 1) - MEAN) / STD


@torch.no_grad()
def zeroshot(model, ev, bs=512):
    x, y, classes, templates = ev
    model.eval()
    W = []
    for c in range(0, len(classes), 256):
        names = classes[c : c + 256]
        feats = torch.stack(
            [
                F.normalize(
                    model.encode_text(
                        cliplab.tokenize(
                            [t.format(n) for n in names],
                            context_length=model.context_length,
                            truncate=True,
                        )
                    ),
                    dim=-1,
                )
                for t in templates
            ]
        )
        W.append(F.normalize(feats.mean(0), dim=-1))
    W = torch.cat(W)
    logits = torch.cat(
        [
            F.normalize(model.encode_image(to_input(x[i : i + bs])), dim=-1) @ W.T
            for i in range(0, len(x), bs)
        ]
    )
    yt = torch.from_numpy(y)
    top5 = logits.topk(5, dim=-1).indices
    model.train()
    return (top5[:, 0] == yt).float().mean().item(), (top5 == yt[:, None]).any(
        -1
    ).float().mean().item()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=3)
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--patch", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--twidth", type=int, default=128)
    p.add_argument("--tlayers", type=int, default=3)
    p.add_argument("--embed", type=int, default=128)
    p.add_argument("--arch", default="vit")
    p.add_argument("--rnwidth", type=int, default=16)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--sources", default="emoji-twitter")
    p.add_argument("--weights", default="")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ctx", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--evalsets", default="emoji-google")
    p.add_argument("--noaug", action="store_true")
    p.add_argument("--heads", type=int, default=0)
    p.add_argument("--jitter", type=float, default=0.0)
    p.add_argument("--gray", type=float, default=0.0)
    p.add_argument("--blur", type=float, default=0.0)
    p.add_argument("--invert", type=float, default=0.0, help="probability of 1 - image")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    random.seed(a.seed)
    cache = "/tmp/cliplab-recipe-cache"
    Path(cache).mkdir(exist_ok=True)
    data = [load_shards(n, a.size, cache) for n in a.sources.split(",")]
    weights = [float(w) for w in a.weights.split(",")] if a.weights else [len(d[0]) for d in data]
    evs = {n: load_evalset(n, a.size, cache) for n in a.evalsets.split(",")}
    heads = a.heads or max(1, a.width // 64)
    if a.arch == "vit":
        vision = ViTConfig(
            image_size=a.size, patch_size=a.patch, width=a.width, layers=a.layers, heads=heads
        )
    else:
        vision = ResNetConfig(image_size=a.size, layers=(1, 1, 1, 1), width=a.rnwidth, heads=8)
    cfg = CLIPConfig(
        embed_dim=a.embed,
        vision=vision,
        text=TextConfig(
            width=a.twidth, heads=max(1, a.twidth // 64), layers=a.tlayers, context_length=a.ctx
        ),
    )
    model = cliplab.create_model(cfg)
    decay = [p_ for n, p_ in model.named_parameters() if p_.ndim >= 2 and "embedding" not in n]
    nodecay = [
        p_ for n, p_ in model.named_parameters() if not (p_.ndim >= 2 and "embedding" not in n)
    ]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": a.wd}, {"params": nodecay, "weight_decay": 0}],
        lr=a.lr,
        betas=(0.9, 0.98),
        eps=1e-6,
    )
    g = torch.Generator().manual_seed(a.seed)
    rng = random.Random(a.seed)
    budget = a.minutes * 60
    t0 = time.time()
    step = 0
    seen = 0
    print(
        f"params {model.num_parameters() / 1e6:.1f}M, data {[len(d[0]) for d in data]}", flush=True
    )
    while True:
        el = time.time() - t0
        if (a.steps and step >= a.steps) or (not a.steps and el > budget):
            break
        # lr: warmup then cosine over the step or time budget
        frac = step / a.steps if a.steps else el / budget
        lr = a.lr * min(1, (step + 1) / a.warmup) * 0.5 * (1 + math.cos(math.pi * frac))
        for gr in opt.param_groups:
            gr["lr"] = lr
        idx = []
        for _ in range(a.batch):
            s = rng.choices(range(len(data)), weights=weights)[0]
            idx.append((s, rng.randrange(len(data[s][0]))))
        x = to_input(np.stack([data[s][0][i] for s, i in idx]))
        if not a.noaug:
            x = augment(x, g, scale=(a.scale, 1.0))
        if a.jitter or a.gray or a.blur:
            x = color_aug(x, g, a.jitter, a.gray, a.blur)
        if a.invert:
            flip = (torch.rand(x.shape[0], 1, 1, 1, generator=g) < a.invert).float()
            img = x * STD + MEAN
            x = (flip * (1 - img) + (1 - flip) * img - MEAN) / STD
        caps = []
        for s, i in idx:
            sample = RawSample(key=str(i), members={"json": data[s][1][i].encode()}, source="x")
            caps.append(draw_caption(sample, rng))
        tok = cliplab.tokenize(caps, context_length=a.ctx, truncate=True)
        loss = clip_loss(
            model.encode_image(x, normalize=True),
            model.encode_text(tok, normalize=True),
            model.logit_scale.exp(),
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        step += 1
        seen += a.batch
        if step % 50 == 0 and "--quiet" not in sys.argv:
            print(
                f"step {step} {el:.0f}s loss {loss.item():.3f} T {model.logit_scale.exp().item():.1f} {seen / el:.0f} samples/s",
                flush=True,
            )
    res = {n: zeroshot(model, ev) for n, ev in evs.items()}
    print(
        "RESULT",
        json.dumps(vars(a)),
        f"steps {step} samples {seen} ({seen / (time.time() - t0):.0f}/s)",
        {n: f"top1 {r[0] * 100:.2f} top5 {r[1] * 100:.2f}" for n, r in res.items()},
        flush=True,
    )


if __name__ == "__main__":
    main()
