"""How fast is SimSiamFeaturizer on one GPU? Against lightly's recipe and the compute ceiling.

In one run, at each image size:

- ours: ``SimSiamFeaturizer.fit`` images/s (mean over epochs after the first), uint8 images
  resident on the device, per-sample augmentation in batched ops, bf16, channels_last;
- (a) lightly's SimSiam recipe: ``lightly.transforms.SimSiamTransform`` per image in
  ``DataLoader`` workers (PIL), the *same* model and training step;
- (b) the compute ceiling: the same model and step on views already on the device (no
  augmentation at all);
- ``transform`` images/s against a plain timm forward of the same encoder on batches already
  on the device.

Ratios are against (a) and (b). The model for (a) and (b) is skddh's own SimSiam network
(timm ResNet-18, 1 channel, projector 2048, predictor 512), so only the data path differs.

    python benchmarks/bench_simsiam.py --device cuda                  # the real run (GPU)
    python benchmarks/bench_simsiam.py --device cpu --sizes 32 --n 256 --epochs 2 \
        --batch-size 32 --workers 2 --steps 4                         # a CPU smoke run

Needs ``pip install lightly`` for (a) (skipped with a note when missing).
"""

import argparse
import os
import platform
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from skddh import SimSiamFeaturizer
from skddh.models._simsiam import _build
from skddh.models._torch import autocast, resolve_device, resolve_dtype


def _images(n, size, seed=0):
    """n uint8 ultrasound-like images of ``size`` px (the synthetic registry, resized)."""
    from skddh.datasets import make_hip_cohort

    base = make_hip_cohort(
        n_subjects=8, image_size=128, n_registry_us=min(n, 1024), n_registry_xr=8, random_state=seed
    ).registry_us.to_numpy(n_jobs=-1)
    t = torch.from_numpy(base[:, None]).float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True)
    arr = t.clamp(0, 255).round().to(torch.uint8)[:, 0].numpy()
    reps = int(np.ceil(n / len(arr)))
    return np.ascontiguousarray(np.tile(arr, (reps, 1, 1))[:n])


def _model(device):
    torch.manual_seed(0)
    encoder, projector, predictor = _build("resnet18", 1, 2048, 512)
    model = torch.nn.ModuleDict(
        {"encoder": encoder, "projector": projector, "predictor": predictor}
    )
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    return model, opt


def _step(model, opt, v1, v2, device, amp):
    cl = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    with autocast(device, amp):
        v = torch.cat([v1, v2]).contiguous(memory_format=cl)
        z = model["projector"](model["encoder"](v))
        p = model["predictor"](z)
        z1, z2 = z.chunk(2)
        p1, p2 = p.chunk(2)
        loss = -0.5 * (
            F.cosine_similarity(p1, z2.detach(), dim=-1).mean()
            + F.cosine_similarity(p2, z1.detach(), dim=-1).mean()
        )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_ours(images, size, args, device):
    enc = SimSiamFeaturizer(
        image_size=size,
        epochs=args.epochs,
        batch_size=args.batch_size,
        device=str(device),
        precision=args.precision,
        random_state=0,
    ).fit(images)
    ips = enc.history_["images_per_s"].to_numpy()
    return float(ips[1:].mean() if len(ips) > 1 else ips[0]), enc


class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, images, transform):
        self.images, self.transform = images, transform

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        v1, v2 = self.transform(Image.fromarray(self.images[i]).convert("RGB"))
        return v1[:1], v2[:1]  # grayscale content: one channel for the 1-channel encoder


def bench_lightly(images, size, args, device, amp):
    try:
        from lightly.transforms import SimSiamTransform
    except ImportError:
        return None
    ds = _PILDataset(images, SimSiamTransform(input_size=size))
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=args.batch_size,
        shuffle=True,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,
        persistent_workers=args.workers > 0,
    )
    model, opt = _model(device)
    seen, t0, it = 0, None, 0
    for _ in range(args.epochs):
        for v1, v2 in loader:
            v1 = v1.to(device, non_blocking=True)
            v2 = v2.to(device, non_blocking=True)
            _step(model, opt, v1, v2, device, amp)
            it += 1
            if it == args.warmup:
                _sync(device)
                t0 = time.perf_counter()
            elif it > args.warmup:
                seen += len(v1)
            if it >= args.warmup + args.steps:
                break
        if it >= args.warmup + args.steps:
            break
    _sync(device)
    return seen / (time.perf_counter() - t0)


def bench_ceiling(size, args, device, amp):
    model, opt = _model(device)
    v1 = torch.randn(args.batch_size, 1, size, size, device=device)
    v2 = torch.randn(args.batch_size, 1, size, size, device=device)
    for _ in range(args.warmup):
        _step(model, opt, v1, v2, device, amp)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        _step(model, opt, v1, v2, device, amp)
    _sync(device)
    return args.steps * args.batch_size / (time.perf_counter() - t0)


def bench_transform(enc, images, args, device, amp):
    enc.transform(images[: args.batch_size])  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    enc.transform(images)
    _sync(device)
    ours = len(images) / (time.perf_counter() - t0)
    model = enc.encoder_.to(device).eval()
    cl = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    x = torch.randn(args.batch_size, 1, images.shape[-1], images.shape[-1], device=device)
    x = x.contiguous(memory_format=cl)
    n_batches = max(1, len(images) // args.batch_size)
    with torch.inference_mode(), autocast(device, amp):
        model(x)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n_batches):
            model(x)
        _sync(device)
    return ours, n_batches * args.batch_size / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[224, 128])
    ap.add_argument("--n", type=int, default=20_000, help="training images")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    warnings.filterwarnings("ignore", category=UserWarning)
    device = resolve_device(args.device)
    amp = resolve_dtype(args.precision, device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(
        f"device: {name or device.type}; torch {torch.__version__}; {os.cpu_count()} CPU cores; "
        f"precision={'bf16' if amp else 'fp32'}; batch {args.batch_size}; n={args.n}; "
        f"lightly workers={args.workers}"
    )
    rows = []
    for size in args.sizes:
        images = _images(args.n, size)
        ours, enc = bench_ours(images, size, args, device)
        light = bench_lightly(images, size, args, device, amp)
        ceil = bench_ceiling(size, args, device, amp)
        tr, plain = bench_transform(enc, images, args, device, amp)
        rows.append((size, ours, light, ceil, tr, plain))
        del images, enc
        if device.type == "cuda":
            torch.cuda.empty_cache()
    hdr = (
        "| px  | fit ours img/s | (a) lightly img/s | ours/(a) | (b) ceiling img/s | ours/(b) "
        "| transform img/s | plain timm img/s | ratio |"
    )
    print("\n" + hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for size, ours, light, ceil, tr, plain in rows:
        la = f"{light:17,.0f}" if light else f"{'(no lightly)':>17}"
        ra = f"{ours / light:8.2f}" if light else f"{'-':>8}"
        print(
            f"| {size:<3} | {ours:14,.0f} | {la} | {ra} | {ceil:17,.0f} | {ours / ceil:8.2f} "
            f"| {tr:15,.0f} | {plain:16,.0f} | {tr / plain:5.2f} |"
        )


if __name__ == "__main__":
    main()
