"""`defectflow init FOLDER`: the format, folders and classes found in a person's folder become a
config that `check` accepts; a folder without annotations is a clear error."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from flows.cli import app
from tasks.core.config import load_config
from tests.support import shared_data

runner = CliRunner()


def test_a_labelimg_folder_becomes_a_voc_config_with_its_classes_and_grayscale(tmp_path):
    from tasks.demo.sample_data import generate

    generate(tmp_path / "line3", count=12, size=64, seed=3, gray_fraction=0.5, troubles=True)
    out = tmp_path / "cfg" / "line3.yaml"
    result = runner.invoke(app, ["--home", str(tmp_path / "home"), "init",
                                 str(tmp_path / "line3"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert (config.name, config.source.format) == ("line3", "voc")
    assert config.source.images == (tmp_path / "line3" / "images").resolve()
    assert config.source.annotations == (tmp_path / "line3" / "annotations").resolve()
    assert config.labels == ["patch", "scratch", "spot"] and config.grayscale == "convert"
    assert "grayscale" in out.read_text() and "% of the images sampled" in out.read_text()
    again = runner.invoke(app, ["--home", str(tmp_path / "home"), "init",
                                str(tmp_path / "line3"), "--out", str(out)])
    assert again.exit_code == 2 and "--force" in again.output  # a person's edits stay


@pytest.mark.parametrize(("folder", "kind", "classes"), [
    ("sahi_terrain_coco", "coco", ["big_vehicle", "car", "human"]),
    ("labelimg_samples/pr641_yolo_sample", "yolo", ["round_object"]),
])
def test_coco_and_yolo_folders_are_recognised(tmp_path, folder, kind, classes):
    source = shared_data(folder)
    out = tmp_path / "line.yaml"
    result = runner.invoke(app, ["--home", str(tmp_path / "home"), "init", str(source),
                                 "--out", str(out), "--name", "line"])
    assert result.exit_code == 0, result.output
    config = load_config(out)
    assert config.source.format == kind and config.labels == classes


def test_a_folder_without_annotations_is_a_clear_error(tmp_path):
    from PIL import Image

    (tmp_path / "photos").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / "a.png")
    result = runner.invoke(app, ["--home", str(tmp_path / "home"), "init",
                                 str(tmp_path / "photos"), "--out", str(tmp_path / "x.yaml")])
    assert result.exit_code == 2 and "no annotations" in result.output
    assert not (tmp_path / "x.yaml").exists()
