"""The README's job specs are valid specs (docs that match the code)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from jobs.spec import parse_spec

README = Path(__file__).parents[1] / "README.md"


def test_every_yaml_spec_in_the_readme_validates() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 2
    for block in blocks:
        parse_spec(yaml.safe_load(block))
