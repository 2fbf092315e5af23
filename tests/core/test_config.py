from pathlib import Path

import pytest

from tasks.core.config import ConfigError, DatasetConfig, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_gets_defaults_and_resolves_paths_against_the_yaml(tmp_path):
    cfg = load_config(write(tmp_path, "name: x\nsource: {format: voc, images: imgs, annotations: xml}\n"))
    assert cfg.grayscale == "drop"
    assert cfg.augment.hflip and not cfg.augment.vflip
    assert (cfg.split.train, cfg.split.validation, cfg.split.test) == (0.8, 0.1, 0.1)
    assert cfg.publish.target == "local"
    assert cfg.source.images == (tmp_path / "imgs").resolve()
    assert cfg.source.annotations == (tmp_path / "xml").resolve()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\nsource: {format: voc, images: a, annotations: b}\nhflp: true\n", "hflp: unknown key"),
        ("name: x\nsource: {format: labelme, images: a, annotations: b}\n", "source.format"),
        ("name: x\nsource: {format: coco, images: a, annotations: [b, c]}\n",
         "list of annotation folders is for VOC"),
        ("name: x\n", "source: required key is missing"),
        ("name: x\nsource: {format: voc, images: a, annotations: b}\ngrayscale: maybe\n", "grayscale"),
        ("name: x\nsource: {format: voc, images: a, annotations: b}\n"
         "split: {train: 0.9, validation: 0.2, test: 0.1}\n", "must be 1.0"),
        ("name: x\nsource: {format: voc, images: a, annotations: b}\npublish: {target: hub}\n",
         "needs repo_id"),
        ("name: x\nsource: {format: voc, images: a, annotations: b}\naugment: {hflip: [1]}\n",
         "augment.hflip"),
        ("name: x\nsource: {format: voc, images: a, annotations: b}\nmodel: {kind: vit}\n"
         "prelabel: {inbox: inbox}\n", "prelabel writes boxes, which a vit classifier does not give"),
        ("name: x\nsource: {format: voc, images: a, annotations: b}\n"
         "prelabel: {inbox: a/new, adopt: verified}\n", "prelabel.inbox"),
        ("name: x\nsource: {format: voc, images: a, annotations: b, verified_inbox: c}\n",
         "source.verified_inbox: set `prelabel: {inbox: ..., adopt: verified}` instead"),
        ("name: x\nsource: {format: voc, images: a, annotations: b}\n"
         "prelabel: {inbox: c, adopt: everything}\n", "prelabel.adopt"),
        ("name: [x\n", "not valid YAML"),
        ("- a\n- b\n", "mapping"),
    ],
)
def test_bad_configs_name_the_file_and_the_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(path) in str(error.value)
    assert expected in str(error.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_shipped_configs_are_valid():
    for path in sorted((Path(__file__).parents[2] / "datasets_cfg").glob("*.yaml")):
        load_config(path)


def test_adopting_verified_inbox_xmls_makes_the_inbox_a_second_source(tmp_path):
    plain = load_config(write(tmp_path, "name: x\nsource: {format: voc, images: a, annotations: b}\n"
                              "prelabel: {inbox: c}\n"))
    assert plain.source.verified_inbox is None  # pre-labels alone: the inbox is never read
    adopting = load_config(write(tmp_path, "name: x\nsource: {format: voc, images: a, "
                                 "annotations: b}\nprelabel: {inbox: c, adopt: verified}\n"))
    assert adopting.source.verified_inbox == (tmp_path / "c").resolve()
    # as a deployment's parameter, the config travels as JSON and is validated again
    again = DatasetConfig.model_validate(adopting.model_dump(mode="json"))
    assert again.source.verified_inbox == (tmp_path / "c").resolve()
