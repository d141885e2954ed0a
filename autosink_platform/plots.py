"""The figures people look at: training curves, score histograms, PR curves (PNG files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def training_curves(history: list[dict], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    epochs = [h["epoch"] for h in history]
    for key in sorted({k for h in history for k in h if k != "epoch"}):
        ax.plot(epochs, [h.get(key, np.nan) for h in history], marker="o", label=key)
    ax.set(xlabel="epoch", title=title)
    ax.legend()
    return _save(fig, path)


def score_histogram(groups: dict[str, np.ndarray], threshold: float, path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    all_scores = np.concatenate(list(groups.values()))
    bins = np.linspace(all_scores.min(), all_scores.max(), 50)
    for name, scores in groups.items():
        ax.hist(scores, bins=bins, alpha=0.55, label=f"{name} (n={len(scores)})")
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4g}")
    ax.set(xlabel="score", ylabel="frames", title=title)
    ax.legend()
    return _save(fig, path)


def pr_curve(scores: np.ndarray, labels: np.ndarray, point: tuple[float, float], path: Path, title: str) -> Path:
    order = np.argsort(-scores, kind="stable")
    y = labels[order]
    tp, fp = np.cumsum(y), np.cumsum(1 - y)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.plot(tp / max(y.sum(), 1), tp / (tp + fp))
    ax.plot(*point, "ro", label="operating point")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    ax.legend()
    return _save(fig, path)


STATUS_COLOURS = {"pass": "tab:green", "below floor": "tab:red", "too few": "lightgrey"}


def case_slices(cases, path: Path, title: str) -> Path:
    """The case table as a person reads it: one bar per slice group (its metric on the test
    split), the floor as a line, coloured by status, with the group's size."""
    rows = cases.sort_values(["slice", "group"], kind="stable").reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(6.5, 0.32 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    ax.barh(y, rows["value"].fillna(0), color=[STATUS_COLOURS.get(s, "tab:blue") for s in rows["status"]])
    floor = float(rows["floor"].iloc[0])
    ax.axvline(floor, color="k", linestyle="--", label=f"floor {floor:g}")
    ax.set_yticks(y, [f"{s}={g}  (n={n})" for s, g, n in zip(rows["slice"], rows["group"], rows["n"], strict=True)])
    low = min(floor, float(rows["value"].min(skipna=True))) if rows["value"].notna().any() else floor
    ax.set(xlim=(max(0.0, low - 0.1), 1.0), xlabel=str(rows["metric"].iloc[0]))
    ax.set_title(title, loc="left")
    ax.legend(loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False)
    return _save(fig, path)
