"""The training curves a person looks at: one line per evaluation (step, train loss, validation
loss, validation mAP50 or accuracy) in the console and the run log, and the loss/quality PNG."""

from __future__ import annotations

from pathlib import Path

QUALITY_KEYS = ("eval_map50", "eval_map", "eval_accuracy")


def curves(history: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(step, value) series out of the Trainer's log history: train_loss, val_loss, val_map50..."""
    series: dict[str, list[tuple[int, float]]] = {}
    for entry in history:
        for key, name in (("loss", "train_loss"), ("eval_loss", "val_loss"),
                          *((k, "val_" + k.removeprefix("eval_")) for k in QUALITY_KEYS)):
            if isinstance(entry.get(key), int | float):
                series.setdefault(name, []).append((int(entry["step"]), float(entry[key])))
    return series


def evaluation_line(step: int, metrics: dict, history: list[dict]) -> str:
    """`step 250 | train loss 1.234 | val loss 1.456 | val mAP50 0.612` for one evaluation."""
    train = [h["loss"] for h in history if "loss" in h and h.get("step", 0) <= step]
    parts = [f"step {step}"]
    if train:
        parts.append(f"train loss {train[-1]:.4f}")
    if "eval_loss" in metrics:
        parts.append(f"val loss {metrics['eval_loss']:.4f}")
    for key, label in (("eval_map50", "val mAP50"), ("eval_map", "val mAP"),
                       ("eval_accuracy", "val accuracy")):
        if key in metrics:
            parts.append(f"{label} {metrics[key]:.4f}")
    return " | ".join(parts)


def plot_training_curves(history: list[dict], path: Path, selected_by: str | None) -> None:
    """Losses on the left axis, validation quality (mAP50 / mAP / accuracy) on the right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = curves(history)
    fig, ax = plt.subplots(figsize=(7, 3.8), dpi=120)
    if "train_loss" in series:
        ax.plot(*zip(*series["train_loss"], strict=True), label="train loss", color="tab:blue")
    if "val_loss" in series:
        ax.plot(*zip(*series["val_loss"], strict=True), "o-", label="validation loss",
                color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    quality = [name for name in ("val_map50", "val_map", "val_accuracy") if name in series]
    if quality:
        right = ax.twinx()
        for name, colour in zip(quality, ("tab:green", "tab:olive", "tab:green"), strict=False):
            right.plot(*zip(*series[name], strict=True), "s-", color=colour,
                       label=name.replace("val_", "validation ").replace("map", "mAP"))
        right.set_ylim(0, 1.02)
        right.set_ylabel("validation quality")
        more_handles, more_labels = right.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.set_title(f"training (best checkpoint chosen by {selected_by})" if selected_by
                 else "training (no selection set: the last checkpoint is kept)")
    ax.legend(handles, labels, fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
