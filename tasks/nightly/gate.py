"""The promotion gate, as a quality engineer would sign it: a challenger becomes champion only if
it clears the floor (`min_metric`), beats the champion's number by more than `min_gain` on the
same frozen test images, and no class falls by more than `max_class_drop` (AP50 for a detector,
F1 for a classifier). Every number the decision used is in it."""

from __future__ import annotations

from tasks.core.config import PromoteConfig


def metric_value(metrics: dict | None, name: str) -> float | None:
    """The promotion metric out of metrics.json (detector: COCO numbers; classifier: accuracy,
    macro_f1)."""
    if not metrics:
        return None
    if name in ("accuracy", "macro_f1"):
        return metrics.get(name)
    return (metrics.get("coco") or {}).get(name)


def class_scores(metrics: dict | None) -> dict[str, float]:
    """Per class: AP50 for a detector (classes without ground truth left out), F1 for a classifier."""
    per_class = (metrics or {}).get("per_class") or {}
    if (metrics or {}).get("kind") == "vit":
        return {name: values["f1"] for name, values in per_class.items() if values["support"]}
    return {name: values["ap50"] for name, values in per_class.items() if values["ap50"] >= 0}


def class_deltas(challenger: dict, champion: dict | None) -> dict[str, dict[str, float | None]]:
    new, old = class_scores(challenger), class_scores(champion)
    return {name: {"challenger": new.get(name), "champion": old.get(name),
                   "delta": None if name not in new or name not in old else new[name] - old[name]}
            for name in sorted(set(new) | set(old))}


def decide(challenger: float | None, champion: float | None, metric: str,
           min_gain: float) -> tuple[bool, str]:
    """Promote only on a strict improvement larger than min_gain; equal or worse keeps the champion."""
    if challenger is None:
        return False, f"the challenger has no {metric}: champion kept"
    if champion is None:
        return True, f"no champion yet: the challenger ({metric} {challenger:.4f}) becomes champion"
    if challenger > champion + min_gain:
        return True, (f"challenger {metric} {challenger:.4f} > champion {champion:.4f}"
                      f" + min_gain {min_gain:g}: promoted")
    return False, (f"challenger {metric} {challenger:.4f} does not beat champion {champion:.4f}"
                   f" + min_gain {min_gain:g}: champion kept")


def gate(challenger: dict, champion: dict | None, metric: str, rule: PromoteConfig) -> dict:
    """The decision: promoted or not, the reason in one line, and every number behind it."""
    new, old = metric_value(challenger, metric), metric_value(champion, metric)
    deltas = class_deltas(challenger, champion) if champion else {}
    promoted, reason = decide(new, old, metric, rule.min_gain)
    if new is not None and new < rule.min_metric:
        promoted, reason = False, (f"challenger {metric} {new:.4f} is below the floor min_metric "
                                   f"{rule.min_metric:g}: not promoted"
                                   + ("" if old is None else ", champion kept"))
    elif promoted and rule.max_class_drop is not None:
        fallen = {name: d["delta"] for name, d in deltas.items()
                  if d["delta"] is not None and d["delta"] < -rule.max_class_drop}
        if fallen:
            promoted = False
            reason = (f"{metric} would rise, but " + ", ".join(
                f"{name} fell by {-delta:.4f}" for name, delta in sorted(fallen.items()))
                + f" (more than max_class_drop {rule.max_class_drop:g}): champion kept")
    return {"promoted": promoted, "reason": reason, "metric": metric, "min_gain": rule.min_gain,
            "min_metric": rule.min_metric, "max_class_drop": rule.max_class_drop,
            "challenger_metric": new, "champion_metric": old, "per_class": deltas}


def decision_markdown(decision: dict) -> str:
    champion = decision["champion_metric"]
    lines = [
        f"# Promotion decision: {'promoted' if decision['promoted'] else 'not promoted'}", "",
        f"| | version | {decision['metric']} on the frozen test split |", "|---|---|---|",
        f"| challenger | {decision['challenger_version']} | {decision['challenger_metric']} |",
        f"| champion | {decision['champion_version'] or '-'} | {'-' if champion is None else champion} |",
        "", decision["reason"], "",
        f"Rule: min_metric {decision['min_metric']:g}, min_gain {decision['min_gain']:g}, "
        f"max_class_drop {decision['max_class_drop']}",
    ]
    if decision["per_class"]:
        lines += ["", "| class | challenger | champion | delta |", "|---|---|---|---|"]
        lines += [f"| {name} | {_fmt(d['challenger'])} | {_fmt(d['champion'])} | {_fmt(d['delta'])} |"
                  for name, d in decision["per_class"].items()]
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:+.4f}" if value < 0 else f"{value:.4f}"
