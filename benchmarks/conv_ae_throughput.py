"""Convolutional autoencoder training throughput on the digits protocol: the tutorial's training
(every image converted to PIL and resized on every epoch, through a DataLoader; float32,
contiguous tensors) vs the ``digits`` pipeline's (images resized once; channels-last; bfloat16
autocast; the pipeline's own network and schedule). Both are trained to the end on the same
20,000 MNIST images, the threshold is chosen on validation, and test F1 is reported, so the
speed-up is compared at the F1 each reaches, not after a couple of epochs.

The middle rows take the tutorial's network and schedule and change one thing at a time, so
the table says where the speed comes from.

    .venv/bin/python benchmarks/conv_ae_throughput.py --repeats 3   # full protocol
    .venv/bin/python benchmarks/conv_ae_throughput.py --ablation    # one run with the middle rows
    .venv/bin/python benchmarks/conv_ae_throughput.py --quick       # 4,000 images, 2 epochs: a smoke run

Needs ../shared/datasets (MNIST, KMNIST). Prints a markdown table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from autosink_pi.runtime import prepare
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms
from tqdm import tqdm

from autosink_platform.models.detectors import ConvAEDetector, _ConvAE, _ConvTranspose2x2
from autosink_platform.pipelines.digits import DIGITS, INPUT, DigitsConfig, extract_digits
from autosink_platform.settings import Settings
from autosink_platform.thresholds import best_f1, metrics_at

# The tutorial's training: our reconstruction of its network (width 32, 16-d code), Adam at 1e-3,
# batch 128, a fixed number of epochs.
TUTORIAL = {"width": 32, "code": 16, "batch_size": 128, "lr": 1e-3, "epochs": 15}


class TutorialImages(Dataset):
    """The tutorial's way: PIL conversion and resize in __getitem__, on every epoch."""

    def __init__(self, images: np.ndarray):
        self.images = images
        self.transform = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor()])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i]))


class TutorialConvAE(_ConvAE):
    """Our reconstruction of the tutorial's network: ReLU before each max-pool, torch's own
    transposed-conv kernel, and a 3x3 conv after the last transposed conv. Ours pools first (the
    same function, with the ReLU on a quarter of the pixels) and computes its 2x2 transposed
    convs as matrix products (the same function, a faster kernel); ``pool_first`` keeps the
    first of those two changes."""

    def __init__(self, c: int, h: int, w: int, width: int, code: int, pool_first: bool = False):
        super().__init__(c, h, w, width, code, refine=True)
        layers = list(self.encoder)
        for k, layer in enumerate(layers[:-1]):
            if not pool_first and isinstance(layer, nn.MaxPool2d) and isinstance(layers[k + 1], nn.ReLU):
                layers[k], layers[k + 1] = layers[k + 1], layer
        self.encoder = nn.Sequential(*layers)
        self.decoder = nn.Sequential(*(native(m) if isinstance(m, _ConvTranspose2x2) else m for m in self.decoder))


def native(m: _ConvTranspose2x2) -> nn.ConvTranspose2d:
    """The same layer, with the same weights, on torch's transposed-conv kernel (built without
    drawing from the random generator, so the tutorial's shuffles stay what they were)."""
    layer = torch.nn.utils.skip_init(nn.ConvTranspose2d, m.in_channels, m.out_channels, 2, stride=2)
    layer.load_state_dict(m.state_dict())
    return layer


class TutorialNetwork(ConvAEDetector):
    """The detector (resized once, channels-last, optional bf16) around the tutorial's network."""

    pool_first = False

    def _net(self, X):
        return TutorialConvAE(*X.shape[1:], self.width, self.code, self.pool_first)


class PoolFirstTutorialNetwork(TutorialNetwork):
    pool_first = True


class ContiguousTutorialNetwork(TutorialNetwork):
    """... with the tutorial's memory layout, to isolate what channels-last adds."""

    _memory_format = torch.contiguous_format


def tutorial_fit(images: np.ndarray, epochs: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    net = TutorialConvAE(1, 32, 32, TUTORIAL["width"], TUTORIAL["code"])
    opt = torch.optim.AdamW(net.parameters(), lr=TUTORIAL["lr"], weight_decay=0.0)
    loader = DataLoader(TutorialImages(images), batch_size=TUTORIAL["batch_size"], shuffle=True, num_workers=0)
    for _ in tqdm(range(epochs), desc="tutorial", unit="epoch", disable=None):
        net.train()
        for x in loader:
            opt.zero_grad()
            loss = net.loss(x)
            loss.backward()
            opt.step()
    return net.eval()


def test_f1(score, split: np.ndarray, label: np.ndarray) -> float:
    """Threshold chosen on validation only, F1 on test (the tutorial's protocol)."""
    val, test = split == "validation", split == "test"
    return metrics_at(score(test), label[test], best_f1(score(val), label[val]).threshold)["f1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4,000 training images, 2 epochs: checks it runs")
    parser.add_argument(
        "--ablation", action="store_true", help="also the one-change-at-a-time rows (always on with --quick)"
    )
    parser.add_argument("--repeats", type=int, default=1, help="alternate tutorial and pipeline this many times")
    parser.add_argument("--out", default="benchmarks/results/conv_ae_throughput.json")
    args = parser.parse_args()
    cfg = DigitsConfig(train=4_000, validation=1_000, test=1_000) if args.quick else DigitsConfig()
    table, native = extract_digits(Settings.from_environ(os.environ).resources()["datasets"].get(), cfg)
    split, label = table["split"].to_numpy(), table["label"].to_numpy()
    raw = native.astype(np.uint8)  # the files' bytes (28x28); each row resizes its own way
    train_u8 = raw[split == "train"]
    pipeline = dict(DIGITS.models[0].params)
    epochs = {"tutorial": 2 if args.quick else TUTORIAL["epochs"], "pipeline": 2 if args.quick else pipeline["epochs"]}
    # The first AdamW in a process spends seconds importing torch's compiler stack: not training.
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])
    # The tutorial's schedule without a validation split (it has none): one held-out image, no early stop.
    as_tutorial = {k: v for k, v in TUTORIAL.items() if k != "epochs"} | {
        "epochs": epochs["tutorial"],
        "val_fraction": 1e-4,
        "patience": epochs["tutorial"],
    }
    bf16 = {"precision": "bf16"}
    variants = [
        ("tutorial network, resized once (data pipeline only)", ContiguousTutorialNetwork, as_tutorial, "fp32"),
        ("tutorial network, resized once, channels-last", TutorialNetwork, as_tutorial, "fp32"),
        ("tutorial network, resized once, channels-last, bf16", TutorialNetwork, as_tutorial | bf16, ""),
        ("the same, pool before ReLU", PoolFirstTutorialNetwork, as_tutorial | bf16, ""),
        (
            "the same, 2x2 transposed convs as matrix products (our conv AE, width 32)",
            ConvAEDetector,
            as_tutorial | bf16,
            "",
        ),
    ]
    if not (args.quick or args.ablation):
        variants = []
    variants.append(("digits pipeline", ConvAEDetector, pipeline | {"epochs": epochs["pipeline"]}, str(pipeline)))
    x = prepare(INPUT, raw)  # as the pipeline (and a device) prepares them
    with torch.no_grad():
        pil = torch.stack([TutorialImages(raw)[i] for i in range(len(raw))])
    rows = []

    def row(run: int, name: str, fit_s: float, n_epochs: int, trained: int, f1: float, note: str) -> None:
        """``trained``: images each epoch trains on (the detector holds a validation share out)."""
        rows.append(
            {
                "run": run,
                "training": name,
                "epochs": n_epochs,
                "seconds": fit_s,
                "images_per_s": trained * n_epochs / fit_s,
                "test_f1": f1,
                "note": note,
            }
        )

    # The machine's speed drifts between minutes, so repeated runs alternate tutorial and pipeline
    # and each row is compared with the tutorial of its own run.
    for run in range(1, args.repeats + 1):
        start = time.perf_counter()
        net = tutorial_fit(train_u8, epochs["tutorial"])
        seconds = time.perf_counter() - start
        with torch.no_grad():
            f1 = test_f1(lambda m, net=net: net.score(pil[m]).numpy(), split, label)
        row(
            run,
            "tutorial: PIL + Resize per image every epoch, fp32",
            seconds,
            epochs["tutorial"],
            len(train_u8),
            f1,
            "the reference",
        )
        for name, family, params, note in variants:
            start = time.perf_counter()
            images = prepare(INPUT, train_u8)  # once, for every epoch
            det = family(**params).fit(images)
            seconds = time.perf_counter() - start
            score = lambda m, det=det: det.decision_function(x[m])  # noqa: E731
            f1 = test_f1(score, split, label)
            row(run, name, seconds, len(det.history), det.fit_result.samples_per_epoch, f1, note)

    print(f"conv AE on the digits protocol ({len(train_u8):,} MNIST to train), {torch.get_num_threads()} threads\n")
    print("| run | training | epochs | seconds | images/s | vs tutorial | test F1 | note |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        base = next(b for b in rows if b["run"] == r["run"])
        r["speedup"] = r["images_per_s"] / base["images_per_s"]
        print(
            f"| {r['run']} | {r['training']} | {r['epochs']} | {r['seconds']:.0f} | {r['images_per_s']:.0f} | "
            f"{r['speedup']:.2f}x | {r['test_f1']:.4f} | {r['note']} |"
        )
    for run in range(1, args.repeats + 1):
        base, ours = (r for r in rows if r["run"] == run and r["training"] in (rows[0]["training"], "digits pipeline"))
        print(
            f"\nrun {run}: pipeline vs tutorial {ours['speedup']:.2f}x images/s, {base['seconds'] / ours['seconds']:.2f}x "
            f"less wall time to train, test F1 {ours['test_f1']:.4f} vs {base['test_f1']:.4f}"
        )
    out = Path(args.out if not args.quick else args.out.replace(".json", "_quick.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
