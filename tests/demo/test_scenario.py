"""The demo's scenario: its config is valid and takes the LoRA path; its summary records a night."""

from types import SimpleNamespace

from tasks.core.config import load_config
from tasks.demo.scenario import (
    NIGHT1_EXPECTED_MAP50,
    demo_record,
    expectation_line,
    night1_expectation,
    untrained_nights,
    write_demo_config,
)


def test_the_demo_config_trains_a_lora_adapter_on_a_base_chosen_by_map50(tmp_path):
    config = load_config(write_demo_config(tmp_path, tmp_path / "bases" / "b", seed=3))
    assert config.model.lora is not None and config.model.checkpoint == str(tmp_path / "bases" / "b")
    assert config.train.select == "map50" and config.train.seed == 3 and config.train.warm_start
    assert config.registry.promote.min_metric > 0 and config.registry.promote.max_class_drop


def test_a_night_is_recorded_with_the_numbers_that_say_whether_it_learnt():
    state = SimpleNamespace(name="Completed", message=None,
                            state_details=SimpleNamespace(flow_run_id="f-1"))
    summary = {"metrics": {"coco": {"map50": 0.81}}, "champion_metrics": {"coco": {"map50": 0.7}},
               "decision": {"promoted": True, "reason": "promoted"},
               "train": {"lora": True, "metric_for_best_model": "map50", "global_step": 2500,
                         "adapter": None}}
    record = demo_record({"state": state, "summary": summary})
    assert record == {"state": "Completed", "trained": True, "reason": None,
                      "flow_run_id": "f-1", "challenger_map50": 0.81,
                      "champion_map50": 0.7, "promoted": True, "decision": "promoted",
                      "train": {"lora": True, "metric_for_best_model": "map50", "global_step": 2500,
                                "adapter": None}}
    nothing_new = demo_record({"state": state, "summary": None})
    assert nothing_new["challenger_map50"] is None and nothing_new["promoted"] is None


def test_a_demo_night_that_trained_nothing_is_reported_with_its_reason_and_fails_the_demo():
    def night(name: str, message: str | None, summary: dict | None) -> dict:
        state = SimpleNamespace(name=name, message=message,
                                state_details=SimpleNamespace(flow_run_id="f"))
        return demo_record({"state": state, "summary": summary})

    trained = night("Completed", None, {"train": {"global_step": 250}})
    nothing_new = night("Completed", "no new images: nothing to retrain", None)
    failed = night("Failed", None, None)
    assert (nothing_new["trained"], nothing_new["reason"]) == (
        False, "no new images: nothing to retrain")
    assert (failed["trained"], failed["reason"]) == (False, "Failed")
    assert untrained_nights([trained, trained]) == []
    assert untrained_nights([trained, nothing_new, failed]) == [
        "night 2 trained nothing (Completed: no new images: nothing to retrain)",
        "night 3 trained nothing (Failed: Failed)"]


def test_the_demo_says_whether_night_1_reached_what_it_is_expected_to_reach():
    """A learning regression shows in every demo run, not only when someone runs the bench;
    it does not fail the demo (the gate judges models)."""
    assert NIGHT1_EXPECTED_MAP50 == 0.8  # issue 28: every seed of make bench-learning
    below = night1_expectation({"trained": True, "challenger_map50": 0.670})
    assert below == {"metric": "map50", "at_least": 0.8, "got": 0.670, "reached": False}
    assert expectation_line(below).startswith(
        "night 1 did not reach the test mAP50 it is expected to reach on this data: 0.670 < 0.8")
    reached = night1_expectation({"trained": True, "challenger_map50": 0.974})
    assert reached["reached"] and expectation_line(reached) == (
        "night 1 reached test mAP50 0.974 (expected at least 0.8)")
    untrained = night1_expectation({"trained": False, "challenger_map50": None})
    assert untrained["got"] is None and not untrained["reached"]
    assert "nothing < 0.8" in expectation_line(untrained)


def test_build_base_pretrains_with_the_seed_it_is_given(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import flows.demo
    from flows.cli import app

    built = []
    monkeypatch.setattr(flows.demo, "build_pretrained_base",
                        lambda folder, seed: built.append((folder, seed)) or folder)
    result = CliRunner().invoke(app, ["--home", str(tmp_path), "build-base", "--seed", "7"])
    assert result.exit_code == 0, result.output
    assert built == [(tmp_path / "bases" / "tiny-florence2-shapes", 7)]


def test_the_demo_inbox_becomes_labels_only_where_the_person_verified(tmp_path):
    from tasks.demo.scenario import DEMO_INBOX, DEMO_VERIFIED, add_inbox, verify_in_labelimg
    from tasks.ingest.inbox import adoptable

    config = load_config(write_demo_config(tmp_path, tmp_path / "bases" / "b", seed=3))
    assert config.source.verified_inbox == tmp_path / "inbox"
    add_inbox(tmp_path, seed=3)
    before = adoptable(tmp_path / "inbox")
    assert (len(before.listing.images), before.waiting) == (0, 0)
    assert len(list((tmp_path / "inbox").iterdir())) == DEMO_INBOX  # photos only
    verify_in_labelimg(tmp_path)
    after = adoptable(tmp_path / "inbox")
    assert len(after.listing.annotations) == len(after.listing.images) == DEMO_VERIFIED
