"""The DDH study's report writer: ``report.md``, the CSV tables, the headline figure and the
decision curve.

Every file is written atomically (:mod:`skddh._atomic`): a failed or interrupted write leaves
the old file as it was. ``report.md`` is written last, so a ``report.md`` newer than the tables
means they are all from one run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skddh._atomic import atomic_savefig, atomic_to_csv, atomic_write_text
from skddh.studies.ddh import StudyResult
from skddh.studies.headline import headline_figure

__all__ = ["write_report"]

_US_MODEL_TEXT = {
    "scratch": "encoder (fresh ResNet-18) and head trained end to end on the labelled images "
    "with label-preserving augmentation, predictions averaged over fixed views "
    "(`FineTuningRegressor`)",
    "finetune": "SimSiam-initialised encoder and head fine-tuned end to end with "
    "label-preserving augmentation (`FineTuningRegressor`)",
    "head": "frozen SimSiam encoder + MLP head (the paper's recipe)",
}

#: What the headline table's columns mean (shared with the report over seeds).
HEADLINE_NOTES = """\
- `passed`: share of the test hips (matched pairs) passed on ultrasound by the rule;
  `oracle`: share an exact measurement would pass (true alpha >= 60 for the alpha rule; true
  alpha >= 60 and true coverage >= 50 for AND), for scale.
- `missed_of_all`: passed yet truly abnormal by the rule's criterion, over all test hips;
  `missed_of_passed`: the same over the passed hips (empty when none is passed).
- `target_miss_bound`: what the rule keeps `missed_of_all` at or below (delta_alpha; AND:
  delta_alpha + delta_coverage) with an exact calibration, for the rated measurement the
  bounds are calibrated on. The decisions here use the paper's calibration (approximate: see
  the calibration methods) and are scored against the true values, so it is a reference,
  not a checked guarantee. Neither rule bounds `missed_of_passed`.
"""


def _md(df: pd.DataFrame, floatfmt=".3f", index=True) -> str:
    """A Markdown table without the optional ``tabulate`` dependency."""
    d = df.reset_index() if index else df
    cols = [str(c) for c in d.columns]

    def fmt(v):
        if v is None or (isinstance(v, float) and np.isnan(v)):
            return ""
        if isinstance(v, (float, np.floating)):
            return format(float(v), floatfmt)
        return str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in d.itertuples(index=False)]
    return "\n".join(lines)


def _methods_section(result: StudyResult) -> str:
    """The "Calibration methods" section: the paper's calibration beside the exact ones."""
    table = result.calibration_methods
    if table is None:
        return ""
    a = table.attrs
    n_subj = result.n_calibration_subjects
    n_cv = int(table["n_units"].iloc[-1])
    unbounded = [m for m, q in table["q_plus_alpha"].items() if not np.isfinite(q)]
    inf_note = ""
    if unbounded:
        n = int(table.loc[unbounded[0], "n_units"])
        inf_note = (
            f"- `inf` ({', '.join(unbounded)}): {n} calibration subjects cannot support "
            f"delta = {a['delta']:.2f}; the smallest delta with a finite bound is 1/(n+1) = "
            f"{1 / (n + 1):.3f}. The bound is then -inf and every hip is referred: that is "
            "the honest answer for so few subjects.\n"
        )
    return f"""## Calibration methods at delta = {a["delta"]:.2f}

The same ultrasound features, three calibrations. The paper's scores every calibration image
as if images were independent and fits its affine correction on those same images: its
coverage for a new infant is only approximate. The two exact ones treat subjects as the
exchangeable units: the subject-level split on the same {n_subj} calibration subjects (one
score per subject, its largest over-prediction), and subject-level CV+ over all {n_cv}
non-test subjects (every subject fits a head in 4 of 5 folds and is scored out of fold).
**The other tables of this report use the paper's calibration**, to compare like for like
with the paper's figures; to deploy, use an exact one (`OneSidedConformalRegressor`'s
default, or `OneSidedCrossConformalRegressor` when subjects are few).

{_md(table, ".3f")}

- `calibration_units`: what is scored, and how many.
- `q_plus_*`: the radius `prediction - LB`. CV+ has no single radius (its bound is per case):
  the median over the {a["n_test_images"]} test images of `predict - lower`, `predict` being
  the mean of the fold models.
{inf_note}- `coverage_*`: share of the {a["n_test_images"]} test images with `y >= LB`;
  `subject_coverage_*`: share of the {a["n_test_subjects"]} test subjects with every image
  covered (the event the subject-level guarantee is about).
- On the {a["n_pairs"]} matched test pairs, the alpha rule (pass when `LB_alpha >= 60`):
  `alpha_pass_rate`; `missed_alpha_below_60`, the share of all hips passed with a rated
  alpha below 60 (the rule keeps it <= delta for the exact methods; alpha is the rated
  measurement the bounds are calibrated on); `missed_xray_finding`, passed with an abnormal
  paired X-ray; `oracle_pass_rate`, the share with a rated alpha >= 60, for scale.
"""


def _guarantees_section(result: StudyResult) -> str:
    """The "Guarantees compared" section: every method at one level on the same hips."""
    table = result.guarantees
    if table is None:
        return ""
    a = table.attrs
    shown = table.drop(columns=["guarantee", "min_calibration_units"])
    promises = "\n".join(
        f"- **{m}**: {row.guarantee} (passes any hip from {row.min_calibration_units})."
        for m, row in table.iterrows()
    )
    return f"""## Guarantees compared at level {a["level"]:.2f}

Each method reads the same ultrasound model and calibrates on the same calibration subjects;
all decide on the {a["n_pairs"]} matched test hips (alpha >= 60 deg; the age-aware row uses
50 deg before 12 weeks; the cross-modal proxy row refers on the X-ray finding predicted from
the ultrasound features, learnt on the training subjects' matched pairs, and its misses are
missed X-ray findings). What each promises, for a new subject from the calibration
population:

{promises}

{_md(shown, ".3f")}

- `us_pass_rate`: share of test hips passed on ultrasound alone.
- `missed`: passed while the rated alpha is below the method's threshold, as a share of all
  test hips (the joint rate the lower bounds and risk control bound). `abnormal_among_passed`:
  the same hips as a share of those passed (what conformal selection bounds).
  `missed_xray_finding`: passed with an abnormal paired X-ray. `oracle_pass_rate`: the share
  truly above the threshold.
- A method that cannot certify any hip with this many calibration units refers every hip
  (pass rate 0): fail-safe, and the honest answer at the paper's calibration size.
  `benchmarks/bench_guarantees.py` compares the same methods with more calibration subjects.
"""


def _headline_section(result: StudyResult) -> str:
    """The "Hips passed with a guarantee" section (empty for a result without a headline)."""
    table = result.headline
    if table is None:
        return ""
    return f"""## Hips passed with a guarantee

On the {result.n_pairs} matched test pairs: the alpha-only rule at delta = 0.10 and the AND rule
at 0.10/0.10, beside the oracle's share.

{_md(table, ".3f")}

{HEADLINE_NOTES}
![hips passed with a guarantee](headline.png)

"""


def _write_headline_figure(table: pd.DataFrame, path: Path, **ranges) -> None:
    """``headline.png`` from a headline table (over seeds: its means, ranges as error bars)."""
    import matplotlib.pyplot as plt

    fig = headline_figure(
        list(table.index),
        table["passed"],
        table["oracle"],
        table["missed_of_all"],
        table["missed_of_passed"],
        **ranges,
    )
    try:
        atomic_savefig(fig, path, dpi=120)
    finally:
        plt.close(fig)


def write_report(result: StudyResult, out: str | Path) -> Path:
    """Write ``report.md``, the CSV tables, ``headline.png`` and ``decision_curve.png`` into
    ``out``.

    Returns
    -------
    Path of ``report.md``.

    Examples
    --------
    >>> import tempfile
    >>> from skddh.studies import run_study, write_report
    >>> tiny = dict(image_size=32, n_registry_us=64, n_registry_xr=64, epochs=1,
    ...             batch_size=32, head_epochs=10)
    >>> result = run_study(tiny, device="cpu", verbose=0, log=lambda line: None)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     print(write_report(result, d).name)
    report.md
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from skddh.plotting import DecisionCurveDisplay

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_to_csv(result.mae, out / "mae.csv", index=False)
    atomic_to_csv(result.radii, out / "radii.csv")
    atomic_to_csv(result.radii_by_delta, out / "radii_by_delta.csv")
    atomic_to_csv(result.coverage, out / "coverage.csv")
    atomic_to_csv(result.policy, out / "policy.csv", index=False)
    if result.calibration_methods is not None:
        atomic_to_csv(result.calibration_methods, out / "calibration_methods.csv")
    if result.guarantees is not None:
        atomic_to_csv(result.guarantees, out / "guarantees.csv")
    if result.headline is not None:
        atomic_to_csv(result.headline, out / "headline.csv")
        _write_headline_figure(result.headline, out / "headline.png")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    shown = ["and 0.10/0.10", "alpha 0.35/0.35", "or 0.35/0.35", "or 0.40/0.40"]
    # lambda in units of mu: the policies matter where lambda / mu is near the prevalence of
    # X-ray findings, so the grid stops at three times it.
    top = max(0.05, 3 * float(np.mean(result.abnormal)))
    for i, key in enumerate(shown):
        DecisionCurveDisplay.from_predictions(
            result.passed[key],
            result.abnormal,
            radiation_costs=np.linspace(0, top, 61),
            miss_penalty=1.0,
            name=key,
            ax=ax,
            references=i == 0,
            lw=2.5 - 0.4 * i,
        )
    ax.set_title(f"Decision curves on the {result.n_pairs} matched test pairs (X-ray finding)")
    fig.tight_layout()
    try:
        atomic_savefig(fig, out / "decision_curve.png", dpi=120)
    finally:
        plt.close(fig)

    t = result.timings
    mae = result.mae
    policy = result.policy.copy()
    n_subj = result.n_calibration_subjects
    of_subjects = "" if n_subj is None else f" of {n_subj} subjects"
    text = f"""# skddh reproduce: report

Scale `{result.scale}`, device `{result.device}`, seed {result.seed}. Ultrasound model:
{_US_MODEL_TEXT.get(result.us_recipe, result.us_model)}; X-ray: frozen SimSiam encoder + MLP
head (the paper's). Synthetic cohort
(`make_hip_cohort`), so "paper" columns are the DDH paper's figures on its real data
(arXiv 2511.18457), shown for shape, not as a target to match digit for digit.

{_headline_section(result)}## Mean absolute error on the test subjects

{_md(mae, ".2f", index=False)}

IHDI grade accuracy (X-ray head, cross-entropy): {mae.attrs.get("ihdi_accuracy", float("nan")):.3f}.
`mae_median_predictor` is the error of predicting the test median: a head must beat it.

{_methods_section(result)}
{_guarantees_section(result)}
## Calibration radii at delta = 0.10 (n = {result.n_calibration} calibration images{of_subjects})

The paper's calibration (image-level scores, affine correction in sample), as in the paper.

{_md(result.radii, ".2f")}

Radii q+ per delta (they shrink as delta grows):

{_md(result.radii_by_delta, ".2f")}

## Empirical coverage on the test images, per delta

{_md(result.coverage, ".3f")}

The paper's calibration again. The guarantee is marginal over calibration draws. This is
one draw of {result.n_calibration} images{of_subjects} (images of one subject are correlated),
with the paper's affine correction fitted on those same images, so one column can sit well off
nominal.

## Selective imaging policy on the {result.n_pairs} matched pairs

Bounds from the paper's calibration. Thresholds alpha >= 60 deg and coverage >= 50 %.
`missed_xray_finding`: passed on ultrasound with an abnormal paired X-ray (AI > 30 deg or
IHDI >= 2); `missed_us_truth`: passed with a true alpha < 60 or coverage < 50.
`paper_us_pass_rate` where the paper reports it.

{_md(policy, ".3f", index=False)}

![decision curve](decision_curve.png)

## Timings (s)

{_md(pd.DataFrame({"seconds": pd.Series(t)}), ".1f")}
"""
    path = out / "report.md"
    atomic_write_text(path, text)  # last: see the module docstring
    return path
