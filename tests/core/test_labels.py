"""Class names: markup refused, aliases and case variants merged on request, any language kept."""

import pytest

from tasks.core.config import ConfigError, load_config
from tasks.core.labels import LabelRules, collisions


def test_markup_control_characters_and_empty_names_are_refused_with_a_reason():
    rules = LabelRules()
    for raw in ("a<b", "<loc_5>", "</s>", "scratch>", "tab\x00", "   "):
        reason, detail = rules.resolve(raw)
        assert reason == "label_invalid", raw
        assert detail


def test_names_in_any_language_come_back_as_the_same_name():
    rules = LabelRules()
    for name in ("傷", "欠け", "défaut", "rolled-in_scale", "трещина"):
        assert rules.resolve(name) == name
    # The same word typed as e + combining accent is the one NFC class, spaces tidied.
    assert rules.resolve(" de\u0301faut  ") == "défaut"
    assert rules.resolve("pit   hole") == "pit hole"


def test_label_map_renames_and_the_allowed_list_is_checked_after_it():
    rules = LabelRules(label_map={"Scratch": "scratch", "scr.": "scratch"},
                       allowed=frozenset({"scratch"}))
    assert rules.resolve("Scratch") == "scratch"
    assert rules.resolve("scr.") == "scratch"
    assert rules.resolve("spot")[0] == "unknown_label"


def test_case_variants_merge_into_the_configured_spelling_only_when_asked():
    apart = LabelRules()
    assert apart.resolve("Scratch") == "Scratch"
    merged = LabelRules(merge_case_variants=True, allowed=frozenset({"Scratch", "傷"}))
    assert merged.resolve("SCRATCH") == "Scratch"
    assert merged.resolve(" scratch") == "Scratch"
    assert LabelRules(merge_case_variants=True).resolve("Dent") == "dent"


def test_collisions_name_every_spelling_with_its_count_and_fate():
    spellings = {"Scratch": 3, "scratch": 10, "scratch ": 1, "spot": 4, "傷": 2}
    apart = collisions(spellings, LabelRules())
    assert apart == [{"key": "scratch", "names": {"Scratch": 3, "scratch": 10, "scratch ": 1},
                      "merged_into": None}]
    merged = collisions(spellings, LabelRules(merge_case_variants=True))
    assert merged[0]["merged_into"] == "scratch"


@pytest.mark.parametrize("key, value", [("labels", "[ok, 'a<b>']"), ("label_map", "{x: '<OD>'}")])
def test_a_config_with_markup_in_a_class_name_is_refused_with_the_key(tmp_path, key, value):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\nsource: {{format: voc, images: i, annotations: a}}\n{key}: {value}\n")
    with pytest.raises(ConfigError, match=f"{key}.*'<' or '>'"):
        load_config(path)
