"""Checking the reference files and the settings that name them, as `python -m etl reference validate [DIR]` does.

The loaders themselves (etl.reference, etl.portfolios through one etl.reference_set.Reference, the stress scenarios
of etl.risk.stress) run in collecting mode: every problem of every file, as `file:line: rule ...` lines, nothing
raised or loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from etl.errors import ValidationError
from etl.reference import collecting
from etl.reference_set import Reference
from etl.risk.stress import load_scenarios
from etl.settings import Settings, get_settings


def validate_reference(directory: Path | str | None = None, settings: Settings | None = None) -> list[str]:
    """Every problem of the reference files in `directory` (default: settings.reference_dir; price_overrides.csv and
    firm_limits.csv are optional) and of the settings that refer to them (`settings_problems`), as
    `file:line: rule ...` lines in file order; [] when the files load and the settings agree with them. Reads only:
    nothing is loaded anywhere.

    Loads every frame of one Reference (instruments, exchanges, portfolios, positions, price overrides, firm
    limits: one set of rules) under `collecting()`; a file that cannot be read at all (missing, no header, missing
    columns) is one problem and the files that depend on it are checked as far as they can be.
    """
    settings = settings or get_settings()
    if directory is not None:
        settings = dataclasses.replace(settings, reference_dir=Path(directory))
    return reference_problems(Reference(settings))


def reference_problems(reference: Reference) -> list[str]:
    """`validate_reference` of the files of `reference`; with none, its frames are loaded and valid."""
    found: list[str] = []
    with collecting() as collected:
        for frame in ("exchanges", "instruments", "portfolios", "positions", "price_overrides", "firm_limits"):
            try:
                getattr(reference, frame)
            except ValidationError as exc:  # the file (or one it depends on) cannot be read at all
                found.extend(str(exc).splitlines())
            found.extend(collected)
            collected.clear()
        found.extend(settings_problems(reference))
    return list(dict.fromkeys(found))  # an unreadable file fails every frame that depends on it: each problem once


def settings_problems(reference: Reference) -> list[str]:
    """The settings that name reference data, checked as the pipeline will use them: every PIPELINE_PRODUCTS
    product is in the instrument master, and the RISK_STRESS_SCENARIOS file loads. One line each, naming the
    setting (and the file:line)."""
    settings = reference.settings
    problems = []
    try:
        known = set(reference.instruments["product_id"])
    except ValidationError:  # the file itself is reported with the files
        known = None
    if known is not None and (unknown := [p for p in settings.products if p not in known]):
        problems.append(f"setting PIPELINE_PRODUCTS: {', '.join(unknown)} not in the instrument master "
                        f"({settings.reference_dir / 'instruments.csv'}): add them there, or unset "
                        "PIPELINE_PRODUCTS to ingest what the book holds")
    try:
        load_scenarios(Path(settings.stress_scenarios_file) if settings.stress_scenarios_file else None, known)
    except ValidationError as exc:
        problems.append(f"setting RISK_STRESS_SCENARIOS: {exc}")
    return problems
