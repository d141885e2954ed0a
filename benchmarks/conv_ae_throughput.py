"""Convolutional autoencoder training throughput: the tutorial's data pipeline (every image
converted to PIL and resized on every epoch, through a DataLoader) vs ours (resized once into a
float32 array, batches sliced from it). Same network, same optimiser, same epochs; then both
models score the same validation images and the best-F1 on each is reported.

    .venv/bin/python benchmarks/conv_ae_throughput.py [--train 5000] [--epochs 2]

Needs ../shared/datasets (MNIST, KMNIST). Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms

from autosink_platform.models import build_detector
from autosink_platform.models.detectors import _ConvAE
from autosink_platform.reference.pipelines import resize
from autosink_platform.reference.sources import datasets_root, read_idx
from autosink_platform.thresholds import best_f1


class TutorialImages(Dataset):
    """The tutorial's way: PIL conversion and resize in __getitem__, on every epoch."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i]))


def tutorial_fit(images: np.ndarray, epochs: int, batch_size: int, seed: int = 0) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    net = _ConvAE(1, 32, 32, 32, 16)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.0)
    loader = DataLoader(TutorialImages(images), batch_size=batch_size, shuffle=True, num_workers=0)
    start = time.perf_counter()
    for _ in range(epochs):
        net.train()
        for x in loader:
            opt.zero_grad()
            loss = net.loss(x)
            loss.backward()
            opt.step()
    return net.eval(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", default="benchmarks/results/conv_ae_throughput.json")
    args = parser.parse_args()
    root = datasets_root()
    rng = np.random.default_rng(0)
    mnist = read_idx(root / "mnist/train-images-idx3-ubyte.gz")
    kmnist = np.load(root / "kmnist/kmnist-test-imgs.npz")["arr_0"]
    idx = rng.permutation(len(mnist))
    train_u8, val_normal = mnist[idx[: args.train]], mnist[idx[args.train : args.train + 1000]]
    val_u8 = np.concatenate([val_normal, kmnist[rng.permutation(len(kmnist))[:1000]]])
    labels = np.r_[np.zeros(1000), np.ones(1000)].astype(int)

    net, tutorial_s = tutorial_fit(train_u8, args.epochs, args.batch_size)
    with torch.no_grad():
        val_pil = torch.stack([TutorialImages(val_u8)[i] for i in range(len(val_u8))])
        tutorial_f1 = best_f1(net.score(val_pil).numpy(), labels).f1

    start = time.perf_counter()
    train = resize(train_u8, 32)  # once, for every epoch
    det = build_detector(
        "conv_ae", epochs=args.epochs, batch_size=args.batch_size, code=16, val_fraction=0.0001, patience=args.epochs
    ).fit(train)
    ours_s = time.perf_counter() - start
    ours_f1 = best_f1(det.decision_function(resize(val_u8, 32)), labels).f1

    seen = args.train * args.epochs
    rows = [
        {
            "pipeline": "tutorial: PIL + Resize per image, every epoch",
            "seconds": tutorial_s,
            "images_per_s": seen / tutorial_s,
            "val_f1": tutorial_f1,
        },
        {
            "pipeline": "ours: resized once, sliced batches",
            "seconds": ours_s,
            "images_per_s": seen / ours_s,
            "val_f1": ours_f1,
        },
    ]
    print(
        f"conv AE, {args.train} MNIST images x {args.epochs} epochs, batch {args.batch_size}, {torch.get_num_threads()} threads\n"
    )
    print("| data pipeline | seconds | images/s | validation best F1 |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['pipeline']} | {r['seconds']:.1f} | {r['images_per_s']:.0f} | {r['val_f1']:.4f} |")
    print(f"\nspeed-up: {rows[1]['images_per_s'] / rows[0]['images_per_s']:.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
