"""docs/config.md, written from the pydantic model itself (every key, its type, its default and
its description), so the reference cannot drift from what `check` accepts:

    python -m tasks.core.config_reference > docs/config.md
"""

from __future__ import annotations

import json
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from tasks.core.config import DatasetConfig

HEADER = """# Config reference

Every key of a line's config (`datasets_cfg/<name>.yaml`), generated from the model `defectflow
check` validates with (`python -m tasks.core.config_reference > docs/config.md`; a test fails
when this page differs from it). Relative paths are read from the config file's folder. An
unknown key is an error, with the file and the key named.
"""


def sections_of(annotation) -> list[type[BaseModel]]:
    return [t for t in (annotation, *typing.get_args(annotation))
            if isinstance(t, type) and issubclass(t, BaseModel)]


def type_name(annotation) -> str:
    """What a person writes: `section`, `one of: a, b`, `int or null`, `list of str`."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "section"
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin in (list, tuple, set):
        return "list of " + " / ".join(type_name(a) for a in args if a is not Ellipsis)
    if origin is dict:
        return f"map of {type_name(args[0])} to {type_name(args[1])}"
    return {"Path": "path", "str": "text", "int": "integer", "float": "number",
            "bool": "true / false"}.get(getattr(annotation, "__name__", ""), str(annotation))


def default_of(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    value = field.default_factory() if field.default_factory else field.default
    if isinstance(value, BaseModel):
        return "(section)"
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value, default=str)


def description_of(field) -> str | None:
    if field.description:
        return field.description
    sections = sections_of(field.annotation)
    return (sections[0].__doc__ or "").strip() or None if sections else None


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str | None]]:
    found = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        found.append((key, type_name(field.annotation), default_of(field),
                      description_of(field)))
        for section in sections_of(field.annotation):
            found += rows(section, key + ".")
    return found


def reference() -> str:
    def cell(text: str | None) -> str:
        return " ".join((text or "").split()).replace("|", "\\|")

    table = ["| key | type | default | what it is |", "|---|---|---|---|"]
    table += [f"| `{key}` | {cell(kind)} | `{cell(default)}` | {cell(description)} |"
              for key, kind, default, description in rows(DatasetConfig)]
    return HEADER + "\n" + "\n".join(table) + "\n"


if __name__ == "__main__":
    print(reference(), end="")
