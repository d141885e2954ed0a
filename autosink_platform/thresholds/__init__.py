from autosink_platform.thresholds.policies import (
    OperatingPoint,
    best_f1,
    k_sigma,
    metrics_at,
    quantile,
    target_fpr,
)

__all__ = ["OperatingPoint", "best_f1", "k_sigma", "metrics_at", "quantile", "target_fpr"]
