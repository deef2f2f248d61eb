"""The docs stay true: docs/config.md is what `cascade config --markdown` generates from the schemas now, and
every key the README's commands set exists."""
import re
import subprocess
import sys
from pathlib import Path

from cascade.config import PruneConfig, schema_paths
from cascade_cli import config_reference
from search.config import SearchConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_config_reference_is_current():
    assert (ROOT / "docs" / "config.md").read_text() == config_reference() + "\n", \
        "docs/config.md is stale: regenerate it with `cascade config --markdown > docs/config.md`"


def test_every_key_the_readme_sets_exists():
    text = (ROOT / "README.md").read_text()
    prune_keys, search_keys = schema_paths(PruneConfig), schema_paths(SearchConfig)
    for key in re.findall(r"--set '?([a-z_.]+)=", text):
        if key.startswith("space."):
            continue
        assert key in prune_keys or key in search_keys, key


def test_help_answers_without_torch():
    code = "import sys, cascade_cli; cascade_cli.main(['--help'])"
    p = subprocess.run([sys.executable, "-c", code + "\nprint(sorted(m for m in sys.modules if m in "
                        "('torch', 'ray', 'mlflow', 'optuna')))"], capture_output=True, text=True, cwd=ROOT)
    assert "usage: cascade" in p.stdout
    p = subprocess.run([sys.executable, "-c", "import sys, cascade_cli\ntry:\n    cascade_cli.main(['prune', "
                        "'--help'])\nexcept SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m in "
                        "('torch', 'ray', 'mlflow', 'optuna')))"], capture_output=True, text=True, cwd=ROOT)
    assert "cascade.ratios  (list[float]; default [0.6, 0.4, 0.0])" in p.stdout and p.stdout.strip().endswith("[]")
