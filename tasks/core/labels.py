"""Class names as the model will learn to say them: one clean spelling per class, in any language.

A class name is copied into every target string (`name<loc_..>..`), so it must not carry markup:
every token Florence-2 treats as structure (`<s>`, `</s>`, `<OD>`, `<loc_N>`, `<pad>`...) is
written with `<` and `>`, hence a name holding either is refused as `label_invalid`, as are
control characters and empty names. Unicode is welcome: names are NFC-normalised (so the same
word typed on two keyboards is one class) and their runs of spaces collapsed.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

from pydantic import BaseModel, ConfigDict, PrivateAttr, field_validator

LABEL_INVALID = "label_invalid"


def tidy(name: str) -> str:
    """NFC, trimmed, inner runs of white space as one space."""
    return " ".join(unicodedata.normalize("NFC", name).split())


def label_problem(name: str) -> str | None:
    """Why `name` cannot be a class name, or None."""
    if not name:
        return "empty class name"
    if "<" in name or ">" in name:
        return f"{name!r} holds '<' or '>': markup would corrupt the model's target strings"
    if any(unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in name):
        return f"{name!r} holds control characters"
    return None


def collision_key(name: str) -> str:
    """Names equal under this key differ only by case or spacing (`Scratch`, ` scratch`)."""
    return tidy(name).casefold()


class LabelRules(BaseModel):
    """How a raw annotation name becomes a class: tidied, then renamed by `label_map`, then (with
    `merge_case_variants`) spelled as the configured label of the same key, else in lower case;
    `allowed` (the config's `labels`) is checked last."""

    model_config = ConfigDict(frozen=True)

    label_map: dict[str, str] = {}
    merge_case_variants: bool = False
    # A sorted tuple, not a set: a set's order (so its pickled bytes, so a cache key holding it)
    # changes with PYTHONHASHSEED, i.e. in every new process.
    allowed: tuple[str, ...] | None = None
    _aliases: dict[str, str] = PrivateAttr(default_factory=dict)
    _spellings: dict[str, str] = PrivateAttr(default_factory=dict)
    _resolved: dict[str, str | tuple[str, str]] = PrivateAttr(default_factory=dict)

    @field_validator("allowed", mode="before")
    @classmethod
    def _sorted(cls, value: object) -> object:
        return None if value is None else tuple(sorted(set(value)))

    def model_post_init(self, context: object) -> None:
        self._aliases = {tidy(alias): name for alias, name in self.label_map.items()}
        known = sorted([*(self.allowed or ()), *self.label_map.values()])
        self._spellings = {collision_key(name): tidy(name) for name in known}

    def resolve(self, raw: str) -> str | tuple[str, str]:
        """The class name, or (reason, detail) when the box cannot keep it (worked out once per
        raw name: a dataset has a few names and many boxes)."""
        if raw not in self._resolved:
            self._resolved[raw] = self._resolve(raw)
        return self._resolved[raw]

    def _resolve(self, raw: str) -> str | tuple[str, str]:
        name = tidy(raw)
        name = tidy(self._aliases.get(name, name))
        if self.merge_case_variants:
            name = self._spellings.get(collision_key(name), name.lower())
        problem = label_problem(name)
        if problem is not None:
            return LABEL_INVALID, problem
        if self.allowed is not None and name not in self.allowed:
            return "unknown_label", f"{name!r} is not in the configured labels"
        return name


def collisions(spellings: Counter[str] | dict[str, int], rules: LabelRules) -> list[dict]:
    """Raw names that differ only by case or spacing, with their counts and what became of them:
    `merged_into` one class, or null when they stay apart (and the model learns two classes)."""
    groups: dict[str, dict[str, int]] = {}
    for raw, count in spellings.items():
        groups.setdefault(collision_key(raw), {})[raw] = count
    found = []
    for key, names in sorted(groups.items()):
        if len(names) < 2:
            continue
        classes = {rules.resolve(raw) for raw in names}
        merged = next(iter(classes)) if len(classes) == 1 else None
        found.append({"key": key, "names": dict(sorted(names.items())),
                      "merged_into": merged if isinstance(merged, str) else None})
    return found


ANY_LABEL = LabelRules()  # names tidied and checked, none renamed, every class allowed
