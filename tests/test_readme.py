"""README.md's commands run as shown on a fresh clone (no activated venv): pasteable shell blocks call the venv's
python, never a bare `python`, and every `make` target the README names exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_shell_blocks_use_the_venv_and_existing_make_targets():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert blocks
    bare = [line for block in blocks for line in block.splitlines()
            if re.match(r"\s*python3?\s", line) or re.search(r"\$\(python3?\s", line)]
    assert bare == [], f"these README lines need .venv/bin/python (or a make target): {bare}"
    assert "$(python " not in readme
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    named = set(re.findall(r"\bmake ([a-z][a-z-]+)", readme))
    assert named - targets == set(), f"README names make targets the Makefile lacks: {named - targets}"
    assert {"psql", "psql-reporting"} <= named
