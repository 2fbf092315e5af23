"""Pictures people would rather look at than read: confusion matrix, PR curves, prediction grid."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patches  # noqa: E402

from tasks.core.records import Box  # noqa: E402


def confusion_png(confusion: dict, path: str | Path, title: str) -> None:
    labels, matrix = confusion["labels"], np.array(confusion["matrix"])
    size = max(4.0, 0.7 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size), dpi=120)
    image = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    top = matrix.max() if matrix.size else 0
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, str(value), ha="center", va="center",
                color="white" if top and value > top / 2 else "black", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def pr_curves_png(curves: dict[str, list[float]], path: str | Path) -> None:
    """Precision against recall at IoU 0.5, one line per class (COCO's 101 recall points)."""
    recall = np.linspace(0, 1, 101)
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for label, precision in sorted(curves.items()):
        values = np.array(precision, dtype=float)
        if (values < 0).all():
            continue  # no ground truth for this class
        values[values < 0] = 0
        ap50 = values.mean()
        ax.plot(recall, values, label=f"{label} (AP50 {ap50:.2f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall at IoU 0.5")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def predictions_grid_png(items: list[tuple], path: str | Path, columns: int = 4,
                         title: str = "test images: ground truth (green) and predictions (red, "
                         "with confidence)") -> None:
    """items: (PIL image, title, true boxes, predicted boxes, scores). Green = truth, red = prediction."""
    rows = max(1, math.ceil(len(items) / columns))
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), dpi=110,
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (image, caption, truth, predicted, scores) in zip(axes.flat, items, strict=False):
        ax.imshow(image.convert("RGB"))
        ax.set_title(caption, fontsize=8)
        _draw(ax, truth, [None] * len(truth), "lime")
        _draw(ax, predicted, scores, "red")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _draw(ax, boxes: list[Box], scores: list, colour: str) -> None:
    for box, score in zip(boxes, scores, strict=True):
        ax.add_patch(patches.Rectangle((box.x1, box.y1), box.width, box.height, fill=False,
                                       edgecolor=colour, linewidth=1.5))
        text = box.label if score is None else f"{box.label} {score:.2f}"
        ax.text(box.x1, box.y1 - 1, text, color="black", fontsize=6, va="bottom",
                bbox={"facecolor": colour, "alpha": 0.7, "pad": 1, "edgecolor": "none"})
