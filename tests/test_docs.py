"""The README and docs/ as a newcomer meets them: a README that reads in five minutes, links that
resolve, and nothing named in the docs that the code does not have (commands, config keys, reason
codes), nor a reason code the code has that the docs do not explain. The config reference is the
pydantic model's own words."""

from __future__ import annotations

import re

import typer

from flows.cli import app
from tasks.core.config_reference import reference, rows
from tests.flows.test_cli import registered_commands
from tests.support import REPO

DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [REPO / "README.md", *DOCS]


def text_of_docs() -> str:
    return "\n".join(page.read_text(encoding="utf-8") for page in PAGES)


def test_the_readme_reads_in_five_minutes():
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 250
    assert [n for n, line in enumerate(lines, 1) if len(line) > 100] == []


def test_every_link_of_the_readme_and_the_docs_resolves():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            if not (page.parent / target.split("#")[0]).exists():
                broken.append(f"{page.relative_to(REPO)} -> {target}")
    assert broken == []
    assert {p.name for p in DOCS} >= {"data.md", "config.md", "training.md", "evaluation.md",
                                      "nightly.md", "labelling.md", "serving.md", "demo.md",
                                      "benchmarks.md", "design.md", "troubleshooting.md"}


def test_the_config_reference_is_the_models_and_every_key_says_what_it_is():
    assert (REPO / "docs" / "config.md").read_text(encoding="utf-8") == reference(), (
        "docs/config.md differs from the model: python -m tasks.core.config_reference > "
        "docs/config.md")
    assert [key for key, _, _, description in rows_of_model() if not description] == []


def rows_of_model():
    from tasks.core.config import DatasetConfig

    return rows(DatasetConfig)


def test_every_command_the_docs_name_exists():
    commands = {" ".join(path) for path in registered_commands(typer.main.get_command(app))}
    # as typed: `defectflow X` in backticks, or a command line's bin/defectflow X
    named = set(re.findall(r"(?:`|bin/)defectflow(?: --home \S+)? ([a-z][a-z-]+)", text_of_docs()))
    assert len(named) > 10 and sorted(named - commands) == []


def test_every_config_key_the_docs_name_exists():
    keys = {key for key, *_ in rows_of_model()}
    sections = {key.split(".")[0] for key in keys}
    named = {key for key in re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)`", text_of_docs())
             if key.split(".")[0] in sections}
    assert sorted(named - keys) == []


CODE_PATTERNS = (r'reason ?= ?"([a-z]+_[a-z_]+)"', r'return "([a-z]+_[a-z_]+)", ',
                 r'box = "([a-z]+_[a-z_]+)", "', r'_quarantine\(\w+, "([a-z]+_[a-z_]+)"',
                 r'box_rejections\((?:[^()]|\([^()]*\))*?"([a-z]+_[a-z_]+)"',
                 r'\(\("([a-z]+_[a-z_]+)", problem\)',
                 r'reason = "[a-z_]+" if [^\n]* else "([a-z]+_[a-z_]+)"')


def reason_codes() -> set[str]:
    """Every reason code the code gives a rejected image, annotation, box or request."""
    from tasks.serving.app import STATUS

    codes = set(STATUS)
    for path in (REPO / "tasks").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for pattern in CODE_PATTERNS:
            codes.update(re.findall(pattern, text))
    return codes


def test_every_reason_code_is_documented_and_every_documented_one_exists():
    codes, docs = reason_codes(), text_of_docs()
    assert len(codes) > 30
    assert sorted(code for code in codes if f"`{code}`" not in docs) == []
    listed = (REPO / "docs" / "data.md").read_text(encoding="utf-8")
    listed = listed[listed.index("stable reason code"):]
    listed = set(re.findall(r"`([a-z]+_[a-z_]+)`", listed[:listed.index(".\n")]))
    assert sorted(listed - codes) == []
