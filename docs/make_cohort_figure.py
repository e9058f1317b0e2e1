"""Make the README's figure of synthetic ultrasound and X-ray phantoms.

Run from the repository root: ``python docs/make_cohort_figure.py``.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

from skddh.datasets import make_hip_cohort, plot_cohort_examples

cohort = make_hip_cohort(random_state=0, image_size=192)
fig = plot_cohort_examples(cohort, n=4)
out = Path(__file__).parent / "images" / "cohort_examples.png"
fig.savefig(out, dpi=100)
print(f"wrote {out}")
