"""The promotion gate: the floor, the margin, and the per-class guard, with every number kept."""

import pytest

from tasks.core.config import PromoteConfig, RegistryConfig
from tasks.nightly.gate import decision_markdown, gate
from tasks.nightly.promotion import Candidate, promote_step
from tasks.nightly.registry import RegistryTarget, champion_version, register_version
from tests.support import registry_and_model


def detector(map50: float, **ap50: float) -> dict:
    return {"kind": "florence2", "coco": {"map": map50 / 2, "map50": map50, "map75": map50 / 3},
            "per_class": {name: {"ap": value / 2, "ap50": value} for name, value in ap50.items()}}


def test_a_model_below_the_floor_is_not_promoted_even_without_a_champion():
    decision = gate(detector(0.3, spot=0.3), None, "map50", PromoteConfig(min_metric=0.5))
    assert not decision["promoted"] and "below the floor min_metric 0.5" in decision["reason"]
    assert gate(detector(0.6, spot=0.6), None, "map50", PromoteConfig(min_metric=0.5))["promoted"]


def test_a_challenger_that_gains_overall_while_a_class_collapses_is_not_promoted():
    champion = detector(0.60, spot=0.90, scratch=0.40, patch=0.50)
    challenger = detector(0.70, spot=0.50, scratch=0.80, patch=0.80)  # spot falls by 0.40
    guarded = gate(challenger, champion, "map50", PromoteConfig(max_class_drop=0.2))
    assert not guarded["promoted"]
    assert "spot fell by 0.4000" in guarded["reason"] and "max_class_drop 0.2" in guarded["reason"]
    assert guarded["per_class"]["spot"]["delta"] == pytest.approx(-0.4)
    assert guarded["per_class"]["scratch"]["delta"] == pytest.approx(0.4)
    # Without the guard the overall gain wins; with a looser guard the drop is tolerated.
    assert gate(challenger, champion, "map50", PromoteConfig())["promoted"]
    assert gate(challenger, champion, "map50", PromoteConfig(max_class_drop=0.5))["promoted"]
    markdown = decision_markdown({**guarded, "challenger_version": 2, "champion_version": 1})
    assert "| spot | 0.5000 | 0.9000 | -0.4000 |" in markdown


def test_a_classifier_is_guarded_by_its_per_class_f1():
    def classifier(macro_f1: float, **f1: float) -> dict:
        return {"kind": "vit", "macro_f1": macro_f1,
                "per_class": {name: {"f1": value, "support": 3} for name, value in f1.items()}}

    decision = gate(classifier(0.8, passed=0.99, scratch=0.6), classifier(0.7, passed=0.7, scratch=0.9),
                    "macro_f1", PromoteConfig(max_class_drop=0.1))
    assert not decision["promoted"] and "scratch fell by 0.3000" in decision["reason"]


def test_the_floor_holds_through_the_registry(tmp_path):
    uri, model_dir = registry_and_model(tmp_path)
    metrics = detector(0.2, spot=0.2)
    version = register_version(uri, tmp_path / "artifacts", "m", model_dir, metrics,
                               {"dataset_fingerprint": "f"})
    decision = promote_step(RegistryTarget(tracking_uri=uri, model_name="m"),
                            RegistryConfig(promote=PromoteConfig(min_metric=0.5)), "map50",
                            Candidate(version=version["version"], metrics=metrics), None)
    assert not decision["promoted"]
    assert champion_version(uri, "m") is None  # a useless first model is not crowned
