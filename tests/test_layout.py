"""The layout rules of the README, checked statically: one folder per pipeline stage, imports that
only point to earlier stages (imports inside functions included), no cycles, small files."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support import REPO

# Which stages each stage may import (besides itself): core <- ingest, images <- dataset <-
# scoring <- training <- evaluation <- nightly <- predict <- serving; demo needs only core. `flows` may
# import anything.
ALLOWED = {
    "core": set(),
    "ingest": {"core"},
    "images": {"core"},
    "demo": {"core"},
    "dataset": {"core", "ingest", "images"},
    "scoring": {"core", "ingest", "images", "dataset"},
    "training": {"core", "ingest", "images", "dataset", "scoring"},
    "evaluation": {"core", "ingest", "images", "dataset", "scoring", "training"},
    "nightly": {"core", "ingest", "images", "dataset", "scoring", "training", "evaluation"},
    "predict": {"core", "ingest", "images", "dataset", "scoring", "training", "evaluation",
                "nightly"},
    "serving": {"core", "ingest", "images", "dataset", "scoring", "training", "evaluation",
                "nightly", "predict"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for top in ("flows", "tasks") for p in sorted((REPO / top).rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every project module a file imports, wherever the import statement sits."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tasks.core import progress` imports the module tasks.core.progress.
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known
                     else node.module for alias in node.names]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(path, set(known)) - {name} for name, path in known.items()}


def stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "tasks" and len(parts) > 2 else None


def test_there_is_no_import_cycle_hidden_or_not():
    graph = import_graph()
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = path[path.index(node):] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for target in sorted(graph[node]):
            visit(target, [*path, node])
        done.add(node)

    for node in sorted(graph):
        visit(node, [])


def test_stages_import_only_earlier_stages_and_tasks_never_imports_flows():
    wrong = []
    for module, targets in import_graph().items():
        if not module.startswith("tasks"):
            continue
        for target in targets:
            if target.startswith("flows"):
                wrong.append(f"{module} imports {target}")
            source_stage, target_stage = stage(module), stage(target)
            if source_stage and target_stage and target_stage != source_stage \
                    and target_stage not in ALLOWED[source_stage]:
                wrong.append(f"{module} ({source_stage}) imports {target} ({target_stage})")
    assert not wrong, "\n".join(wrong)


def test_every_module_of_tasks_lives_in_a_stage_folder():
    loose = [p.name for p in (REPO / "tasks").glob("*.py") if p.name != "__init__.py"]
    assert not loose
    assert {p.name for p in (REPO / "tasks").iterdir() if p.is_dir() and p.name != "__pycache__"} \
        == set(ALLOWED)


def test_files_stay_small():
    too_long = {str(p.relative_to(REPO)): n for top in ("flows", "tasks")
                for p in (REPO / top).rglob("*.py")
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > 300}
    assert not too_long
    assert len((REPO / "flows" / "cli.py").read_text(encoding="utf-8").splitlines()) < 190


def test_code_version_sees_an_edit_in_a_subfolder(tmp_path):
    from tasks.core.caching import code_version

    (tmp_path / "stage").mkdir(parents=True)
    (tmp_path / "top.py").write_text("x = 1\n")
    module = tmp_path / "stage" / "deep.py"
    module.write_text("y = 1\n")
    before = code_version.__wrapped__(tmp_path)
    module.write_text("y = 2\n")
    assert code_version.__wrapped__(tmp_path) != before


def test_the_package_ships_every_stage_folder():
    from setuptools.config.pyprojecttoml import read_configuration

    # setuptools expands pyproject's `packages.find` into the packages it will ship.
    shipped = set(read_configuration(REPO / "pyproject.toml")["tool"]["setuptools"]["packages"])
    expected = {module_name(p) for p in (REPO / "tasks").rglob("__init__.py")} | {"flows"}
    assert expected <= shipped, expected - shipped
