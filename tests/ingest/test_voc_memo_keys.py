"""The VOC reader's memos (parsed XMLs, items made) are named by the code that makes them: an
edit in a later stage keeps them (a night after such an edit parses nothing again), an edit in
the reader makes new ones."""

from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.labels import LabelRules
from tasks.ingest.voc_outcomes import outcome_memo
from tasks.ingest.voc_parse import parse_memo
from tests.support import TasksCopy

KEYS: dict[str, Callable[[Path], str]] = {
    "parsed XMLs": lambda root: parse_memo(root / "store").path.name,
    "items made": lambda root: outcome_memo(root / "store", LabelRules()).path.name,
}


@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS)
def test_an_edit_in_a_later_stage_keeps_the_memos(key, tmp_path, monkeypatch):
    copy = TasksCopy(tmp_path, monkeypatch)
    before = key(tmp_path)
    for module in ("images/sample.py", "dataset/publish.py", "training/trainer.py",
                   "nightly/alerts.py", "core/config.py", "ingest/coco.py"):
        copy.append(module)
    assert key(tmp_path) == before


@pytest.mark.parametrize("module", ["ingest/voc_parse.py", "core/memo.py"])
@pytest.mark.parametrize("key", KEYS.values(), ids=KEYS)
def test_an_edit_in_the_parser_makes_new_memos(key, module, tmp_path, monkeypatch):
    copy = TasksCopy(tmp_path, monkeypatch)
    before = key(tmp_path)
    copy.append(module)
    assert key(tmp_path) != before


def test_an_edit_in_the_reader_makes_new_items_and_keeps_the_parsed_xmls(tmp_path, monkeypatch):
    copy = TasksCopy(tmp_path, monkeypatch)
    before = {name: key(tmp_path) for name, key in KEYS.items()}
    copy.append("ingest/voc.py")
    after = {name: key(tmp_path) for name, key in KEYS.items()}
    assert after["items made"] != before["items made"]
    assert after["parsed XMLs"] == before["parsed XMLs"]
