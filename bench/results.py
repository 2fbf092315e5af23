"""RESULTS.md is written by several benchmarks: each owns the sections it writes."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def sections(text: str) -> list[str]:
    """The text cut before every `## ` title (the first part is what comes before any)."""
    parts = text.split("\n## ")
    return [parts[0]] + ["## " + part for part in parts[1:]]


def write_section(text: str, title_prefix: str) -> None:
    """Replace (or append) the section whose title starts with `title_prefix`."""
    current = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    kept = [part.rstrip("\n") for part in sections(current) if not part.startswith(title_prefix)]
    RESULTS.write_text("\n\n".join(kept) + "\n\n" + text.rstrip("\n") + "\n")


def sections_owned_elsewhere(owned_here: tuple[str, ...]) -> str:
    """The current sections whose titles do not start with one of `owned_here`."""
    if not RESULTS.exists():
        return ""
    parts = sections(RESULTS.read_text())[1:]
    return "\n\n".join(p.rstrip("\n") for p in parts if not p.startswith(owned_here))
