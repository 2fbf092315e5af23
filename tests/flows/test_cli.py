"""The command line, as a user types it (typer's runner, in-process, on the session's test server)."""

import json
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from flows.cli import app

runner = CliRunner()


def test_help_lists_the_commands_in_the_order_of_the_tour():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    panels = [result.output.index(f"─ {panel} ") for panel in (
        "Pipeline", "Every night", "Labelling", "Serving the champion", "Tools")]
    assert panels == sorted(panels)
    places = [result.output.index(f"│ {command} ") for command in (
        "prepare", "train", "run", "serve", "predict", "serve-model", "coco-eval")]
    assert places == sorted(places)


def registered_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...],
                                                                                click.Command]:
    """Every command the typer app registers (a sub-app's commands under its name), as the
    command line sees them: a command added tomorrow is in here without anyone listing it."""
    found = {}
    for name, command in group.commands.items():
        found[(*prefix, name)] = command
        if isinstance(command, click.Group):
            found.update(registered_commands(command, (*prefix, name)))
    return found


COMMANDS = registered_commands(typer.main.get_command(app))


def test_the_commands_are_read_from_the_app():
    assert {" ".join(path) for path in COMMANDS} >= {
        "check", "prepare", "train", "evaluate", "coco-eval", "run", "serve", "demo", "build-base", "watch",
        "predict"}


@pytest.mark.parametrize("command", sorted(COMMANDS), ids=" ".join)
def test_every_command_explains_itself(command):
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output and "Traceback" not in result.output
    # Its own sentence, not just typer's frame: the docstring's first line, in the help.
    summary = (COMMANDS[command].help or "").strip().split("\n\n")[0]
    assert summary, f"`{' '.join(command)}` has no docstring to explain it"
    shown = " ".join(result.output.replace("│", " ").split())
    assert " ".join(summary.replace("`", "").split()) in shown  # markdown: `code` is shown bare


def test_a_bad_config_is_a_clear_error_not_a_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nsource: {format: voc, images: a, annotations: b}\ngrayscale: maybe\n")
    result = runner.invoke(app, ["check", str(bad)])
    assert result.exit_code == 2
    assert "grayscale" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(("schedule", "named"), [
    ("{cron: 'every night at 2'}", "schedule.cron"),
    ("{cron: '0 2 * * *', timezone: Europe/Berln}", "schedule.timezone"),
])
def test_check_refuses_a_schedule_serve_cannot_run(tmp_path, schedule, named):
    config = tmp_path / "line.yaml"
    config.write_text("name: x\nsource: {format: voc, images: a, annotations: b}\n"
                      f"schedule: {schedule}\n")
    result = runner.invoke(app, ["check", str(config)])
    said = " ".join(result.output.split())
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert named.split(".")[1] in said and "schedule" in said, said


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_server")
def test_train_command_leaves_a_loadable_model_and_a_loss_curve(synthetic_dataset, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("name: synthetic\nsource: {format: voc, images: x, annotations: y}\n"
                      "model: {checkpoint: florence-community/Florence-2-base}\n"
                      "train: {lr: 0.002, batch_size: 8, eval_steps: 5}\n")
    args = ["train", str(config), "--dataset", str(synthetic_dataset), "--out", str(tmp_path / "m"),
            "--model", "tiny", "--max-steps", "10"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    from prefect.settings import PREFECT_API_URL

    assert f"Prefect server: {PREFECT_API_URL.value()}" in " ".join(result.output.split())
    summary = json.loads((tmp_path / "m" / "train_summary.json").read_text())
    assert summary["global_step"] == 10 and summary["checkpoint"] == "tiny"
    assert (tmp_path / "m" / "loss_curve.png").exists()
    assert (tmp_path / "m" / "model" / "adapter_model.safetensors").exists()
    # Same dataset fingerprint, config and code: the train task comes back Cached.
    from flows.train import train

    state = train(str(config), str(synthetic_dataset), str(tmp_path / "m"), "tiny", 10,
                  return_state=True)
    from tasks.core.run_history import task_run_states

    states = dict(task_run_states(state.state_details.flow_run_id))
    assert [s for name, s in states.items() if name.startswith("train")] == ["Cached"]
    # Its folder deleted, the result would point at nothing: it trains again instead.
    import shutil

    shutil.rmtree(tmp_path / "m")
    state = train(str(config), str(synthetic_dataset), str(tmp_path / "m"), "tiny", 10,
                  return_state=True)
    states = dict(task_run_states(state.state_details.flow_run_id))
    assert [s for name, s in states.items() if name.startswith("train")] == ["Completed"]
    assert (tmp_path / "m" / "model" / "adapter_model.safetensors").exists()
    # The CLI keeps routine "Finished in state Completed()" lines out of the run log.
    from tests.support import logs_of

    logs = logs_of(state.state_details.flow_run_id)
    assert any(line.startswith("step 5 |") for line in logs), logs  # what happened is there
    assert "Finished in state Completed()" not in logs


@pytest.mark.usefixtures("prefect_server")
def test_train_with_an_unreachable_checkpoint_exits_with_advice(synthetic_dataset, tmp_path):
    config = tmp_path / "cfg.yaml"
    config.write_text("name: s\nsource: {format: voc, images: x, annotations: y}\n")
    result = runner.invoke(app, ["train", str(config), "--dataset", str(synthetic_dataset),
                                 "--out", str(tmp_path / "m"), "--model", str(Path("/nonexistent"))])
    assert result.exit_code == 2
    assert "--model tiny" in result.output


@pytest.mark.usefixtures("prefect_server")
@pytest.mark.parametrize("prefect_alarm", ["raised", "lost in a finalizer"])
def test_a_training_that_runs_out_of_time_fails_in_one_line(synthetic_dataset, tmp_path,
                                                            monkeypatch, prefect_alarm):
    if prefect_alarm != "raised":
        # Prefect's timeout raises from a SIGALRM handler, once; landing in a `__del__` its
        # exception is only printed as ignored (seen here: a 0.7 s limit, then 400 steps to the
        # end). The training's own check must stop it anyway.
        from prefect._internal.concurrency.cancellation import AlarmCancelScope

        monkeypatch.setattr(AlarmCancelScope, "_sigalarm_to_error",
                            lambda scope, *args: scope.cancel(throw=False))
    config = tmp_path / "cfg.yaml"
    config.write_text("name: s\nsource: {format: voc, images: x, annotations: y}\n"
                      "train: {lr: 0.002, batch_size: 8, eval_steps: 50, timeout_minutes: 0.002}\n")
    result = runner.invoke(app, ["train", str(config), "--dataset", str(synthetic_dataset),
                                 "--out", str(tmp_path / "m"), "--model", "tiny", "--max-steps", "400"])
    assert result.exit_code == 1, result.output
    assert "train failed" in result.output and "timed out" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m" / "model").exists()  # stopped before the end (400 steps take minutes)


def test_serve_deploys_the_retrain_flow_on_the_schedule_one_run_at_a_time(tmp_path, monkeypatch):
    from flows.retrain import retrain

    served = {}
    monkeypatch.setattr(type(retrain), "serve", lambda flow, **kwargs: served.update(kwargs))
    slots = []
    monkeypatch.setattr("flows.serve.ensure_night_slot", slots.append)
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")  # a server of the user's
    config = tmp_path / "plant.yaml"
    config.write_text("name: plant\nsource: {format: voc, images: x, annotations: y}\n"
                      "schedule: {cron: '0 3 * * *', timezone: Europe/Berlin}\n")
    result = runner.invoke(app, ["--home", str(tmp_path / "home"), "serve", str(config),
                                 "--cron", "30 1 * * *", "--work", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    assert served["name"] == "retrain-plant" and served["schedule"].cron == "30 1 * * *"
    assert served["schedule"].timezone == "Europe/Berlin"
    # One run at a time: the runner's, and the line's one-slot limit each night takes (not the
    # deployment's own: Prefect stops a live run that lost it, see liveness).
    assert served["limit"] == 1 and "global_limit" not in served and slots == ["retrain-plant"]
    assert served["parameters"] == {"config_path": str(config.resolve()),
                                    "work_dir": str((tmp_path / "w").resolve()),
                                    "home": str((tmp_path / "home").resolve())}


def test_the_cli_reads_home_before_prefect_is_imported():
    # Prefect reads PREFECT_HOME once, when imported: importing it with the CLI module would put
    # its database (and the UI's history) outside the --home the user gave, and warn.
    import subprocess
    import sys

    code = "import sys, flows.cli; print('prefect' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


def test_a_nights_summary_says_what_its_training_started_from_in_true_words():
    from flows.summaries import started_from

    assert started_from({"checkpoint": "/h/bases/tiny-florence2-shapes", "adapter": None,
                         "resumed_from_step": 0}) == "tiny-florence2-shapes"
    warm = started_from({"checkpoint": "/h/bases/tiny-florence2-shapes",
                         "adapter": "/h/lines/demo/champion/v1-0123abcd/model",
                         "resumed_from_step": 0})
    assert warm == "the champion's LoRA adapter (v1-0123abcd) on tiny-florence2-shapes"
    assert "resumed at step 120" in started_from({"checkpoint": "x", "resumed_from_step": 120})
