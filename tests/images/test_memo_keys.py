"""The content store's verdicts and derived images, and the image step's memos, are named by the
code that makes them: an edit there makes new ones, an edit elsewhere in `tasks` keeps them."""

from collections.abc import Callable
from pathlib import Path

import pytest

from tasks.core.config import ImageLimits
from tasks.core.records import Manifest
from tasks.images.sample import ImageStepConfig
from tasks.images.shard import _shard_memo, sample_memo
from tasks.images.store import ContentStore, inspection_settings
from tests.support import TasksCopy

CONFIG = ImageStepConfig(grayscale="convert", images=ImageLimits())
SHARD = Manifest(path="shard.jsonl", digest="0" * 64, count=3)
STORE_KEYS: dict[str, Callable[[Path], str]] = {
    "inspection verdict": lambda root: inspection_settings(10**8, 2),
    "derived image": lambda root: ContentStore(root / "store").image_path("ab" * 32, "rgb", ".png").name,
}
STEP_KEYS: dict[str, Callable[[Path], str]] = {
    "image step memo": lambda root: sample_memo(CONFIG, root / "store").path.name,
    "shard memo": lambda root: _shard_memo(SHARD, CONFIG, root / "store", root / "m").name,
}
ELSEWHERE = ("nightly/alerts.py", "training/detector.py", "dataset/publish.py", "core/config.py",
             "ingest/voc.py")


@pytest.mark.parametrize("key", [*STORE_KEYS.values(), *STEP_KEYS.values()],
                         ids=[*STORE_KEYS, *STEP_KEYS])
def test_an_edit_elsewhere_keeps_the_name(key, tmp_path, monkeypatch):
    copy = TasksCopy(tmp_path, monkeypatch)
    before = key(tmp_path)
    for module in ELSEWHERE:
        copy.append(module)
    assert key(tmp_path) == before


@pytest.mark.parametrize("module", ["images/store.py", "images/grayscale.py"])
@pytest.mark.parametrize("key", [*STORE_KEYS.values(), *STEP_KEYS.values()],
                         ids=[*STORE_KEYS, *STEP_KEYS])
def test_an_edit_in_the_code_that_decodes_judges_or_renders_makes_new_names(key, module,
                                                                            tmp_path, monkeypatch):
    copy = TasksCopy(tmp_path, monkeypatch)
    before = key(tmp_path)
    copy.append(module)
    assert key(tmp_path) != before


@pytest.mark.parametrize("module", ["images/sample.py", "images/boxes.py", "core/records.py"])
@pytest.mark.parametrize("key", STEP_KEYS.values(), ids=STEP_KEYS)
def test_an_edit_in_the_image_step_makes_new_memos_and_keeps_the_store(key, module, tmp_path,
                                                                       monkeypatch):
    copy = TasksCopy(tmp_path, monkeypatch)
    before = key(tmp_path), [store_key(tmp_path) for store_key in STORE_KEYS.values()]
    copy.append(module)
    assert key(tmp_path) != before[0]
    assert [store_key(tmp_path) for store_key in STORE_KEYS.values()] == before[1]
