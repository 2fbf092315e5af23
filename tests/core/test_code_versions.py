"""Which code a result is keyed on: training checkpoints on the code that can change them (an
alert's text keeps them, the collator does not), found by reading imports."""

from pathlib import Path

import pytest

from tasks.core.code_versions import TASKS_ROOT, closure_version, module_closure
from tasks.core.config import ModelConfig, TrainConfig
from tasks.training.run_folder import CHECKPOINT_CODE, run_identity
from tests.support import TasksCopy


@pytest.fixture
def tasks_copy(tmp_path, monkeypatch) -> TasksCopy:
    return TasksCopy(tmp_path, monkeypatch)


def identity() -> str:
    return run_identity("fingerprint", ModelConfig(checkpoint="tiny"), TrainConfig(), None)


def test_an_alert_text_keeps_the_run_identity_and_the_collator_changes_it(tasks_copy):
    before = identity()
    tasks_copy.edit("nightly/alerts.py", "Open it in the Prefect UI", "See the Prefect UI")
    assert identity() == before  # so a retried night resumes its checkpoints
    tasks_copy.edit("core/config.py", '"""', '"""Config values reach the identity as values. ')
    assert identity() == before
    tasks_copy.edit("training/detector.py", "        self.prompt = None\n",
                    "        self.prompt = None\n        self.padding = 'longest'\n")
    assert identity() != before


def test_an_edit_in_a_module_training_imports_changes_the_identity(tasks_copy):
    before = identity()
    tasks_copy.edit("dataset/loc_tokens.py", "BINS = 1000", "BINS = 1000  # Florence-2's bins")
    assert identity() != before


def test_the_checkpoint_code_is_training_scoring_and_what_they_import():
    names = {p.relative_to(TASKS_ROOT).as_posix() for p in module_closure(CHECKPOINT_CODE)}
    assert {"training/detector.py", "training/trainer.py", "scoring/score.py",
            "dataset/loc_tokens.py", "core/records.py", "__init__.py"} <= names
    assert not {name for name in names
                if name.split("/")[0] in ("nightly", "predict", "evaluation", "demo")}
    assert "core/config.py" not in names and "core/model_config.py" not in names


def package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_imports_inside_functions_and_relative_imports_are_followed(tmp_path):
    root = package(tmp_path / "tasks", {
        "__init__.py": "", "a/__init__.py": "", "b/__init__.py": "", "c/__init__.py": "",
        "a/x.py": "def f():\n    from tasks.b import y\n    return y\n",
        "b/y.py": "from . import z\nfrom ..c.w import thing\n",
        "b/z.py": "import json\n", "c/w.py": "thing = 1\n", "c/unused.py": "",
    })
    found = {p.relative_to(root).as_posix() for p in module_closure(("a/x.py",), (), root)}
    assert found == {"__init__.py", "a/__init__.py", "a/x.py", "b/__init__.py", "b/y.py",
                     "b/z.py", "c/__init__.py", "c/w.py"}
    before = closure_version(("a/x.py",), (), root)
    (root / "c" / "unused.py").write_text("x = 2\n")
    from tasks.core.code_versions import _closure_version

    _closure_version.cache_clear()
    assert closure_version(("a/x.py",), (), root) == before
    (root / "c" / "w.py").write_text("thing = 2\n")
    _closure_version.cache_clear()
    assert closure_version(("a/x.py",), (), root) != before


def statements_by_syntax_tree(source: bytes) -> list[tuple[int, str, list[str]]]:
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(0, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or "", [alias.name for alias in node.names]))
    return sorted(found)


TRICKY = b'''"""import docstring"""
import a.b as c, d  # import e
from . import (f,
    g as h,)
from ..i.j import *
def k():
    if True: import l; from m import n
    x = {"import": 1}[  # an index
        "import"]
    raise ValueError() from None
from \\
    o import p
'''


def test_imports_read_from_tokens_are_those_of_the_syntax_tree():
    from tasks.core.code_versions import import_statements

    assert sorted(import_statements(TRICKY)) == statements_by_syntax_tree(TRICKY) == [
        (0, "a.b", []), (0, "d", []), (0, "l", []), (0, "m", ["n"]), (0, "o", ["p"]),
        (1, "", ["f", "g"]), (2, "i.j", ["*"])]
    repo = TASKS_ROOT.parent
    for path in [*repo.glob("tasks/**/*.py"), *repo.glob("flows/*.py"), *repo.glob("tests/**/*.py")]:
        source = path.read_bytes()
        assert sorted(import_statements(source)) == statements_by_syntax_tree(source), path
