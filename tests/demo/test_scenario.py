"""The demo's scenario: its config is valid and takes the LoRA path; its summary records a night."""

from types import SimpleNamespace

from tasks.core.config import load_config
from tasks.demo.scenario import demo_record, write_demo_config


def test_the_demo_config_trains_a_lora_adapter_on_a_base_chosen_by_map50(tmp_path):
    config = load_config(write_demo_config(tmp_path, tmp_path / "bases" / "b", seed=3))
    assert config.model.lora is not None and config.model.checkpoint == str(tmp_path / "bases" / "b")
    assert config.train.select == "map50" and config.train.seed == 3 and config.train.warm_start
    assert config.registry.promote.min_metric > 0 and config.registry.promote.max_class_drop


def test_a_night_is_recorded_with_the_numbers_that_say_whether_it_learnt():
    state = SimpleNamespace(name="Completed", state_details=SimpleNamespace(flow_run_id="f-1"))
    summary = {"metrics": {"coco": {"map50": 0.81}}, "champion_metrics": {"coco": {"map50": 0.7}},
               "decision": {"promoted": True, "reason": "promoted"},
               "train": {"lora": True, "metric_for_best_model": "map50", "global_step": 2500,
                         "adapter": None}}
    record = demo_record({"state": state, "summary": summary})
    assert record == {"state": "Completed", "flow_run_id": "f-1", "challenger_map50": 0.81,
                      "champion_map50": 0.7, "promoted": True, "decision": "promoted",
                      "train": {"lora": True, "metric_for_best_model": "map50", "global_step": 2500,
                                "adapter": None}}
    nothing_new = demo_record({"state": state, "summary": None})
    assert nothing_new["challenger_map50"] is None and nothing_new["promoted"] is None
