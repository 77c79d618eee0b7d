"""The README's usage example runs as written; the quickstart tutorial runs with tiny settings."""

import re
import runpy
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_readme_usage_example_runs(tmp_path, monkeypatch):
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks, "README.md has no python example"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["latent"].shape[1] == 4
    assert (tmp_path / "my_model" / "config.json").is_file()


@pytest.mark.parametrize("tutorial", sorted(p.name for p in (ROOT / "tutorials").glob("*.py")))
def test_tutorial_runs_with_tiny_settings(tutorial, monkeypatch):
    monkeypatch.setenv("PYRO_SVAE_TUTORIAL_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    runpy.run_path(str(ROOT / "tutorials" / tutorial), run_name="__main__")
