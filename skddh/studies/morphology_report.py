"""The morphology study's report writer: ``report.md``, the CSV tables and the figures.

Files are written atomically (:mod:`skddh._atomic`), ``report.md`` last, like the other
reports.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pandas as pd

from skddh._atomic import atomic_savefig, atomic_to_csv, atomic_write_text
from skddh.studies.morphology import (
    MORPHOLOGY_LABELS,
    SEED_AC1,
    SEED_LATENCY_MS,
    SEED_TABLE,
    MorphologyStudyResult,
)
from skddh.studies.report import _md

__all__ = ["write_morphology_report"]

_METRICS = list(SEED_TABLE.columns)
_THRESHOLD_TEXT = {"youden": "Youden's J", "0.5": "0.5"}
_NAMES = {
    "ischial_spine": "Ischial spine sign",
    "cam": "Cam",
    "dysplasia": "Dysplasia",
    "any_abnormality": "All abnormalities",
}


def _percent(metric: str, v: float) -> str:
    if not np.isfinite(v):
        return "n/a"
    return f"{v:.3f}" if metric in ("f1", "auroc") else f"{100 * v:.1f}%"


def table_one(result: MorphologyStudyResult) -> pd.DataFrame:
    """The seed's Table 1 beside ours, one row per (label, source).

    One seed: our point estimate with its patient-bootstrap 95 % interval; several: the mean
    and standard deviation of the point estimates over seeds.
    """
    rep = result.report
    rows = []
    for label in MORPHOLOGY_LABELS:
        seed_row = {"abnormality": _NAMES[label], "source": "seed (Mayo, 100 radiographs)"}
        seed_row.update({m: _percent(m, SEED_TABLE.loc[label, m]) for m in _METRICS})
        ours = {"abnormality": "", "source": "skddh (synthetic hold-out)"}
        for m in _METRICS:
            r = rep[(rep["label"] == label) & (rep["metric"] == m)]
            if len(result.seeds) == 1:
                v, lo, hi = r[["value", "low", "high"]].iloc[0]
                ours[m] = f"{_percent(m, v)} ({_percent(m, lo)}-{_percent(m, hi)})"
            else:
                ours[m] = f"{_percent(m, r['value'].mean())} ± {_percent(m, r['value'].std())}"
        rows += [seed_row, ours]
    return pd.DataFrame(rows)


def ac1_table(result: MorphologyStudyResult) -> pd.DataFrame:
    """Our raters' AC1 (mean over seeds, the first seed's interval) beside the seed's."""
    rows = []
    for label in MORPHOLOGY_LABELS:
        a = result.ac1[result.ac1["label"] == label]
        first = a.iloc[0]
        rows.append(
            {
                "label": _NAMES[label],
                "seed AC1": f"{SEED_AC1[label]:.2f}",
                "ours": f"{a['ac1'].mean():.3f}",
                "SE": f"{first['se']:.3f}",
                "95% CI": f"{first['low']:.3f}-{first['high']:.3f}",
                "difference": f"{a['ac1'].mean() - SEED_AC1[label]:+.3f}",
                "within 0.1": bool(abs(a["ac1"].mean() - SEED_AC1[label]) <= 0.1),
            }
        )
    return pd.DataFrame(rows)


def _verdict(result: MorphologyStudyResult) -> list[str]:
    rep = result.report
    auc = rep[rep["metric"] == "auroc"].groupby("label")[["value", "low"]].agg(["mean", "min"])
    ac1 = result.ac1.groupby("label")["ac1"].mean()
    lat = result.latency["ms_median"].mean()
    lines = []
    low_ok = all(auc.loc[lb, ("low", "min")] > 0.5 for lb in MORPHOLOGY_LABELS)
    lines.append(
        "- AUROC on the hold-out, per label"
        + (" (mean over seeds)" if len(result.seeds) > 1 else "")
        + ": "
        + ", ".join(
            f"{_NAMES[lb]} {auc.loc[lb, ('value', 'mean')]:.3f}" for lb in MORPHOLOGY_LABELS
        )
        + (
            "; the lower end of every label's 95 % interval (patient bootstrap) is above 0.5"
            if low_ok
            else "; NOT every label's 95 % interval (patient bootstrap) lies above 0.5"
        )
        + (" on every seed." if len(result.seeds) > 1 else ".")
    )
    close = [abs(ac1[lb] - SEED_AC1[lb]) <= 0.1 for lb in MORPHOLOGY_LABELS]
    lines.append(
        "- Our raters' Gwet's AC1 is within 0.1 of the seed's for "
        f"{sum(close)} of {len(close)} labels."
    )
    lines.append(
        f"- The pipeline takes {lat:.0f} ms per radiograph (median, one at a time) at this "
        f"scale, against the seed's {SEED_LATENCY_MS:.0f} ms."
    )
    if not result.gradcam.empty:
        g = result.gradcam.groupby("label")["concentration"].agg(["mean", "min", "max"])
        spread = len(result.seeds) > 1
        lines.append(
            "- Grad-CAM puts "
            + ", ".join(
                f"{r['mean']:.1f} times"
                + (f" ({r['min']:.1f}-{r['max']:.1f} over seeds)" if spread else "")
                + f" as much weight per pixel on the {k} region"
                for k, r in g.iterrows()
            )
            + " as on the rest of the crop (1 = no preference)."
        )
    return lines


def _roc_figure(result: MorphologyStudyResult):
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    pred = result.predictions[result.predictions["seed"] == result.seeds[0]]
    fig, ax = plt.subplots(figsize=(5.2, 5))
    for label in MORPHOLOGY_LABELS:
        y = pred[f"true_{label}"]
        if y.nunique() < 2:
            continue
        RocCurveDisplay.from_predictions(y, pred[f"p_{label}"], name=_NAMES[label], ax=ax)
    ax.plot([0, 1], [0, 1], ls=":", c="0.5", lw=1, label="chance")
    ax.set_title(f"Hold-out ROC curves (expert labels, seed {result.seeds[0]})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def _gradcam_figure(result: MorphologyStudyResult):
    import matplotlib.pyplot as plt

    from skddh.plotting import GradCAMDisplay

    ex = result.gradcam_examples
    n = max(len(v["images"]) for v in ex.values())
    fig, axes = plt.subplots(len(ex), n, figsize=(2.3 * n, 2.8 * len(ex)), squeeze=False)
    for row, (label, v) in zip(axes, ex.items()):
        k = len(v["images"])
        GradCAMDisplay(
            images=v["images"], maps=v["maps"], label=label, probabilities=v["probabilities"]
        ).plot(ax=row[:k])
        for a, mask in zip(row[:k], v["masks"]):
            a.contour(mask, levels=[0.5], colors="white", linewidths=1)
        for a in row[k:]:
            a.set_axis_off()
    fig.suptitle(
        "Grad-CAM on hold-out hips positive for the label; white: the region that carries it",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def write_morphology_report(
    result: MorphologyStudyResult, out: str | Path, *, command: str = ""
) -> Path:
    """Write the morphology study's tables, figures and ``report.md`` (last) into ``out``.

    Parameters
    ----------
    result : MorphologyStudyResult
        From :func:`~skddh.studies.morphology.run_morphology_study`.
    out : str or Path
        Output directory (created).
    command : str, default=""
        The command that produced it, for the report.

    Returns
    -------
    Path
        ``out/report.md``.
    """
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tables = {
        "clinical_report.csv": result.report,
        "auroc_pipeline_vs_true_boxes.csv": result.oracle_auroc,
        "ac1.csv": result.ac1,
        "localization.csv": result.localization,
        "gradcam_concentration.csv": result.gradcam,
        "selective.csv": result.selective,
        "latency.csv": result.latency,
        "thresholds.csv": result.thresholds,
        "predictions.csv": result.predictions,
    }
    for name, frame in tables.items():
        atomic_to_csv(frame, out / name, index=False)
    figures = [("roc.png", _roc_figure(result))]
    if result.gradcam_examples:
        figures.append(("gradcam.png", _gradcam_figure(result)))
    for name, fig in figures:
        atomic_savefig(fig, out / name, dpi=120)
        plt.close(fig)
    cfg = result.config
    loc = result.localization.mean(numeric_only=True)
    lat = result.latency.mean(numeric_only=True)
    oracle = (
        result.oracle_auroc.groupby("label")[["pipeline_auroc", "true_box_auroc"]]
        .mean()
        .loc[list(MORPHOLOGY_LABELS)]
    )
    n_hold = int(result.predictions.groupby("seed").size().iloc[0])
    prevalence = result.predictions[[f"true_{lb}" for lb in MORPHOLOGY_LABELS]].mean()
    ci_note = (
        f"in brackets the patient-level bootstrap 95 % interval ({cfg['n_bootstraps']} resamples)"
        if len(result.seeds) == 1
        else f"mean ± std of the point estimates over seeds {', '.join(map(str, result.seeds))}"
    )
    lines = [
        "# Hip morphology on AP pelvis radiographs (synthetic cohort)",
        "",
        "SYNTHETIC DATA FOR METHOD DEVELOPMENT. NOT FOR CLINICAL USE.",
        "",
        f"Seeds {', '.join(map(str, result.seeds))}; {cfg['n_patients']} patients per cohort "
        f"({cfg['n_patients'] - cfg['n_holdout']} radiographs read by two raters to train on, "
        f"{cfg['n_holdout']} read by the expert to test on, {n_hold} hips), radiographs of "
        f"{cfg['image_size']} px. Localiser: `HipJointLocalizer` ({cfg['localizer_backbone']}, "
        f"{cfg['localizer_size']} px input, {cfg['localizer_epochs']} epochs). Classifier: "
        f"`MorphologyClassifier` ({cfg['backbone']}, {cfg['crop_size']} px crops, "
        f"{cfg['epochs']} epochs, "
        f"{'default augmentation' if cfg.get('augment', True) else 'no augmentation'}, "
        f"sex as the auxiliary output, balanced positive weights, "
        + (
            f"thresholds by {_THRESHOLD_TEXT.get(str(cfg['threshold']), cfg['threshold'])} on "
            f"a {cfg['validation_size']:.0%} patient split), "
            if str(cfg["threshold"]) != "0.5"
            else f"threshold 0.5, {cfg['validation_size']:.0%} of the patients held out to "
            "calibrate the selective rule), "
        )
        + "trained on crops of the annotated boxes and tested through the whole pipeline "
        f"(localise, crop, classify). Machine: {platform.machine()}, {platform.system()}, "
        f"python {platform.python_version()}." + (f" Command: `{command}`." if command else ""),
        "",
        "Hold-out prevalence per hip (expert): "
        + ", ".join(f"{_NAMES[lb]} {prevalence[f'true_{lb}']:.0%}" for lb in MORPHOLOGY_LABELS)
        + " (the seed's, derived from its Table 1: about 30 %, 67 %, 28 %, 76 %).",
        "",
        "## Verdict",
        "",
        *_verdict(result),
        "",
        "## Table 1: the seed's and ours",
        "",
        "The seed's figures are on 100 real radiographs; ours on the synthetic hold-out, "
        f"{ci_note}. They compare in shape, not in level: our labels are geometry drawn "
        "into the pixels.",
        "",
        _md(table_one(result), index=False),
        "",
        "![ROC curves](roc.png)",
        "",
        "## Rater agreement (Gwet's AC1, training pool)",
        "",
        "The two raters of the training radiographs, per hip; `ours` is the mean over seeds, "
        "its standard error and interval (Gwet 2008) those of the first seed.",
        "",
        _md(ac1_table(result), index=False),
        "",
        "## Localisation and what it costs",
        "",
        f"Hold-out boxes: mean IoU {loc['mean_iou']:.3f} (worst {loc['min_iou']:.3f}), mean "
        f"centre error {loc['centre_error_px']:.1f} px on {cfg['image_size']} px radiographs. "
        "AUROC of the same classifier through the pipeline and on crops of the true boxes:",
        "",
        _md(oracle.round(3).reset_index(), index=False),
        "",
    ]
    if result.gradcam_examples:
        lines += [
            "## Grad-CAM",
            "",
            "Per label, on hold-out hips positive for it (crops of the true boxes): "
            "`concentration` is the mean map value inside the label's region over the mean "
            "outside it (1: no preference); `share_above_1` the share of hips whose own "
            "ratio exceeds 1; `region_area` the region's share of the crop. Regions: "
            "`skddh.studies.morphology.label_region_masks`.",
            "",
            _md(result.gradcam.round(3), index=False),
            "",
            "![Grad-CAM](gradcam.png)",
            "",
        ]
    if not result.selective.empty:
        sel = result.selective
        a, d = sel["alpha"].iloc[0], sel["delta"].iloc[0]
        show = sel[
            [
                "seed",
                "label",
                "lambda",
                "calibration_accepted_share",
                "holdout_accepted_share",
                "holdout_error_accepted_hips",
                "holdout_error_accepted_patients",
                "holdout_error_all_hips",
            ]
        ]
        lines += [
            "## Selective classification: refer to the expert when unsure",
            "",
            f"`SelectiveClassifier` (Learn-then-Test, Bonferroni over 20 thresholds) on the "
            f"{int(sel['calibration_patients'].iloc[0])} validation patients (the network never "
            f"trained on them, nothing was tuned on them): per label, a call is accepted "
            "when its probability is at least "
            f"`lambda` away from the label's threshold, chosen so that with probability >= "
            f"{1 - d:.0%} over the calibration draw the share of new patients with a wrong "
            f"accepted call, among those with one, is at most {a:.0%}. `lambda` = inf: "
            "nothing could be certified, every hip is referred. The calibration labels are "
            "the raters' readings; the hold-out is judged by the expert, a different reader, "
            "so its figures are observed, not guaranteed. Error columns are empty where nothing "
            "was accepted.",
            "",
            _md(show.round(3), index=False),
            "",
        ]
    lines += [
        "## Latency",
        "",
        f"Localisation and classification of both hips, one radiograph at a time, at this "
        f"scale's sizes on this machine: median {lat['ms_median']:.0f} ms, mean "
        f"{lat['ms_mean']:.0f} ± {lat['ms_std']:.0f} ms (the seed: {SEED_LATENCY_MS:.0f} ms "
        "for its ensemble pipeline). `benchmarks/bench_morphology_latency.py` times the "
        "seed's configuration (ConvNeXt-Tiny at 224 px).",
        "",
        "## Thresholds (validation split)",
        "",
        _md(result.thresholds.round(3), index=False),
        "",
        f"Seconds: cohorts {result.timings.get('cohort', 0):.0f}, localiser "
        f"{result.timings.get('localizer', 0):.0f}, classifier "
        f"{result.timings.get('classifier', 0):.0f}, evaluation "
        f"{result.timings.get('evaluation', 0):.0f}.",
        "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
