"""The README's demo numbers come from the code: its table is what the results script renders."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _script():
    spec = importlib.util.spec_from_file_location(
        "make_readme_results", ROOT / "docs" / "make_readme_results.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_demo_table_matches_the_committed_results():
    script = _script()
    results, machine, command = script.read_committed()
    assert results.run.nunique() >= 3  # over seeds, never one draw
    expected = script.render(results, machine, command)
    assert script.readme_block((ROOT / "README.md").read_text()) == expected, (
        "README.md's demo table differs from docs/results/readme_demo.csv: rerun "
        "python docs/make_readme_results.py --reuse"
    )
