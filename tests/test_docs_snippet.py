"""The getting-started snippet of the docs runs, and its page's words match its output.

docs/getting_started.rst and the landing page include docs/snippets/getting_started.py and say
that at this toy scale every test hip is referred to X-ray (the fail-safe); this checks it.
"""

import runpy
from pathlib import Path

import numpy as np
import pytest

SNIPPET = Path(__file__).resolve().parents[1] / "docs" / "snippets" / "getting_started.py"


@pytest.mark.slow
def test_getting_started_snippet_runs_and_refers_every_hip(capsys):
    ns = runpy.run_path(str(SNIPPET))
    out = capsys.readouterr().out
    test = ns["test"]
    bounds = ns["policy"].predict_lower(ns["us"].images[test])
    assert list(bounds.columns) == ["alpha", "beta", "coverage"]
    decision = ns["decision"]
    assert decision.shape == (int(test.sum()),) and set(np.unique(decision)) <= {0, 1}
    # the page: "the bounds ... sit below the thresholds, and the policy refers every test hip"
    assert (bounds["alpha"] < 60).all()
    assert decision.sum() == 0
    assert f"passed on ultrasound: 0% of {decision.size} test images" in out


def test_getting_started_snippet_is_a_dozen_lines():
    text = SNIPPET.read_text()
    body = text.split("# start\n", 1)[1].split("# end", 1)[0]
    assert len([line for line in body.splitlines() if line.strip()]) <= 12
