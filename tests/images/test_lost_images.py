"""A derived image lost from the content store is made again, to the byte, where its record
names it; never from a source whose bytes changed since."""

from pathlib import Path

import pytest
from PIL import Image

from tasks.images.store import ContentStore, dataset_image_bytes, derived_image, flip_op, sha256_bytes


@pytest.fixture
def record(tmp_path) -> dict:
    source = tmp_path / "gray.jpg"
    Image.linear_gradient("L").resize((40, 30)).save(source, quality=90)
    sha = sha256_bytes(source.read_bytes())
    path, _ = derived_image(source, sha, flip_op("rgb", "hflip"), "JPEG", 10**8,
                            ContentStore(tmp_path / "store"))
    return {"processed_path": path, "image_path": str(source), "sha256": sha,
            "image_op": "rgb", "augmentation": "hflip", "image_format": "JPEG"}


def test_a_lost_flip_is_made_again_to_the_byte(record):
    made = Path(record["processed_path"]).read_bytes()
    Path(record["processed_path"]).unlink()
    assert dataset_image_bytes(record) == made == Path(record["processed_path"]).read_bytes()


def test_a_lost_image_whose_source_changed_since_is_not_made_from_other_pixels(record):
    Path(record["processed_path"]).unlink()
    Image.new("L", (40, 30), 7).save(record["image_path"])
    with pytest.raises(FileNotFoundError, match="has changed since"):
        dataset_image_bytes(record)


def test_a_lost_source_is_an_error(record):
    Path(record["image_path"]).unlink()
    with pytest.raises(FileNotFoundError):
        dataset_image_bytes({**record, "processed_path": None, "augmentation": "none",
                             "image_op": None})
