"""The models' settings, apart from the networks they configure: a pipeline declares its models
with these, and the code location that loads the declarations never imports torch (its code
server and every run process start without it; a step that trains imports it)."""

from __future__ import annotations

from dataclasses import dataclass

PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class FitConfig:
    epochs: int = 15
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 3  # epochs without a better validation loss before stopping
    seed: int = 0
    # "bf16": training steps run under CPU autocast to bfloat16 (weights, optimiser state,
    # validation and the exported model stay float32). Faster per step on CPUs with native bf16
    # (AVX512-BF16, AMX; benchmarks/conv_ae_throughput.py measures it); elsewhere correct but
    # slower, so it is opt-in.
    precision: str = "fp32"
    # "best": the weights of the epoch with the lowest validation loss. "last": the weights the
    # schedule ends with (cosine-annealed to zero), for models whose validation loss is measured
    # on noisy labels, where its minimum picks an epoch by chance.
    keep: str = "best"
    # Train with 2-D convolution weights in channels-last (NHWC) memory: oneDNN's convolutions,
    # batch norm and pooling run faster in it on CPUs (benchmarks/conv_ae_throughput.py measures
    # the switch). The same function with other rounding; the model comes back in the default layout.
    channels_last: bool = False

    def __post_init__(self):
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.keep not in ("best", "last"):
            raise ValueError(f"keep must be 'best' or 'last', got {self.keep!r}")


@dataclass(frozen=True)
class ClassifierConfig:
    arch: str = "valve_cnn"  # or any torchvision classification model name (global pooling: see models/classifier.py)
    # valve_cnn: channels of the first block, doubled once, then kept. A glass under the spout
    # in a bright kitchen is a faint pale ring; narrower networks missed it on some seeds.
    width: int = 32
    dropout: float = 0.3  # valve_cnn head: few sessions to learn from, so a strong regulariser
    image_size: int = 64
    batch_size: int = 64
    # Short and annealed to zero, keeping the last weights: the validation loss is measured on
    # noisy weak labels, and its minimum fell on an early epoch at a high learning rate.
    fit: FitConfig = FitConfig(epochs=6, lr=2e-3, keep="last", channels_last=True)
    # A retrain that starts from the champion's weights fine-tunes: a shorter schedule at a lower
    # rate keeps what the champion knows while the new sessions teach it what it got wrong.
    finetune: FitConfig = FitConfig(epochs=3, lr=5e-4, keep="last", channels_last=True)
    # Focal loss (Lin et al., 2017): down-weights the many frames the network already gets right,
    # so the few hard positives (faint glasses, dishes half under the spout) carry the gradient.
    # benchmarks/classifier_loss.py compares it with plain cross-entropy against the truth.
    focal_gamma: float = 2.0
    # A fine-tune uses plain (confidence-weighted) cross-entropy instead. Focal loss gives the
    # frames the champion already gets right almost no gradient, so a fine-tune on a dataset with
    # a new kind of hard frame (a new sink) spent every step on those and let the old kitchens
    # drift: the candidate lost its margin on faint positives that the champion kept, and the
    # promotion policy refused it for the slices it regressed. Cross-entropy keeps the easy old
    # frames pulling on the weights while the new ones are learned.
    finetune_focal_gamma: float = 0.0


@dataclass(frozen=True)
class FrameGuardConfig:
    width: int = 16  # channels of the first conv; doubled at each downsampling
    # A global code, not a spatial map: an 8x8 bottleneck copied any smooth image, while 32
    # numbers hold a sink's layout and objects but not a noise field or a fogged blur.
    code_dim: int = 32
    batch_size: int = 64
    max_shift: int = 3  # pixels; camera mounts move a little between sessions
    # Codes of one session are strongly correlated, so the code covariance is estimated from
    # few independent scenes; shrinking it towards its diagonal keeps unseen sessions ordinary.
    covariance_shrinkage: float = 0.5
    fit: FitConfig = FitConfig(epochs=15, lr=2e-3, patience=3, channels_last=True)
    finetune: FitConfig = FitConfig(epochs=5, lr=5e-4, patience=2, channels_last=True)  # from the champion's weights
