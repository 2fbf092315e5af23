"""The benchmarks say at which commit each figure was measured."""

import subprocess

from bench.results import measured_at


def git(folder, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=folder,
                          check=True, capture_output=True, text=True).stdout.strip()


def test_a_figure_names_its_commit_and_says_when_the_tree_had_changes(tmp_path):
    git(tmp_path, "init", "-q")
    (tmp_path / "bench.py").write_text("GOAL = 1\n")
    git(tmp_path, "add", "bench.py")
    git(tmp_path, "commit", "-q", "-m", "first")
    commit = git(tmp_path, "rev-parse", "--short", "HEAD")
    (tmp_path / "notes.txt").write_text("untracked files change no figure\n")
    assert measured_at(tmp_path) == commit
    (tmp_path / "bench.py").write_text("GOAL = 2\n")
    assert measured_at(tmp_path) == f"{commit} + changes"


def test_outside_a_checkout_the_commit_is_unknown(tmp_path):
    assert measured_at(tmp_path) == "?"
