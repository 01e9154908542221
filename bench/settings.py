"""Spec changes from a bench's command line: `--set section.field=value` (a YAML value)."""

from __future__ import annotations

import argparse

import yaml


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """The `--set` option, repeatable."""
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.FIELD=YAML",
        help="any spec field, e.g. --set model.fit_points=2000, or --set model.kernel=null "
        "to let the data choose the kernel",
    )


def settings(items: list[str]) -> dict[str, dict]:
    """`section.field=value` items as {section: {field: value}}."""
    changes: dict[str, dict] = {}
    for item in items:
        key, _, value = item.partition("=")
        section, _, field = key.strip().partition(".")
        changes.setdefault(section, {})[field] = yaml.safe_load(value)
    return changes


def merged(spec: dict, changes: dict) -> dict:
    """`spec` with `changes` applied section by section (one level of nesting)."""
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in spec.items()}
    for section, fields in changes.items():
        out.setdefault(section, {}).update(fields)
    return out
