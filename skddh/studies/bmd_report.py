"""The BMD study's report writer: ``report.md``, the CSV tables and the figures.

Files are written atomically (:mod:`skddh._atomic`), ``report.md`` last, like the DDH report.
"""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import pandas as pd

from skddh._atomic import atomic_savefig, atomic_to_csv, atomic_write_text
from skddh.studies.bmd import BMD_METHODS, PAPER_PEARSON_R, BMDStudyResult
from skddh.studies.report import _md

__all__ = ["write_bmd_report"]

_METHOD_TEXT = {
    "supervised": "the regressor on the labelled training images only",
    "triplet": "the same with the adaptive triplet loss",
    "self_training": "`SelfTrainingRegressor` around the plain regressor (unlabelled images)",
    "both": "`SelfTrainingRegressor` around the triplet regressor (the paper's method)",
    "all_labels": "reference: the plain regressor on every training patient's DEXA (the "
    "ceiling of what pseudo-labels can buy back)",
}


def _pm(mean, std, fmt=".3f"):
    if not np.isfinite(mean):
        return ""
    return f"{mean:{fmt}} ± {std:{fmt}}" if np.isfinite(std) else f"{mean:{fmt}}"


def _accuracy_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in summary.itertuples(index=False):
        rows.append(
            {
                "labelled": f"{r.fraction:.0%}",
                "method": r.method,
                "Pearson r": _pm(r.pearson_r_mean, r.pearson_r_std),
                "MAE (g/cm2)": _pm(r.mae_mean, r.mae_std, ".4f"),
                "CCC": _pm(r.ccc_mean, r.ccc_std),
                "paper r": f"{PAPER_PEARSON_R:.4f}",
            }
        )
    return pd.DataFrame(rows)


def _screening_table(summary: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for r in summary.itertuples(index=False):
        rows.append(
            {
                "labelled": f"{r.fraction:.0%}",
                "method": r.method,
                "AUROC": _pm(r.auroc_mean, r.auroc_std),
                "sensitivity": _pm(r.sensitivity_mean, r.sensitivity_std),
                "specificity": _pm(r.specificity_mean, r.specificity_std),
            }
        )
    return pd.DataFrame(rows)


def _verdict(result: BMDStudyResult, fraction=0.25) -> str:
    comp = result.comparison
    if comp.empty or "both" not in set(comp["method"]):
        return "The comparison needs the `supervised` and `both` methods."
    at = comp[(np.isclose(comp["fraction"], fraction)) & (comp["method"] == "both")]
    if at.empty:
        at = comp[comp["method"] == "both"].iloc[[0]]
        fraction = float(at["fraction"].iloc[0])
    row = at.iloc[0]
    n = int(row["n_seeds"])
    gain, spread = row["r_gain_mean"], row["spread_over_seeds"]
    if n < 2:
        return (
            f"At {fraction:.0%} labelled, self-training + triplet loss changes Pearson r by "
            f"{gain:+.3f} from supervised-only on one seed; the spread over seeds needs two "
            "or more (`--seeds`)."
        )
    if row["beats_by_more_than_spread"]:
        return (
            f"At {fraction:.0%} labelled, self-training + triplet loss beats supervised-only in "
            f"Pearson r by {gain:+.3f} (mean of {n} paired seeds, min {row['r_gain_min']:+.3f}), "
            f"more than the spread over seeds ({spread:.3f}, the larger of the two methods' "
            "standard deviations)."
        )
    return (
        f"At {fraction:.0%} labelled, self-training + triplet loss does **not** beat "
        f"supervised-only in Pearson r by more than the spread over seeds: gain {gain:+.3f} "
        f"(mean of {n} paired seeds), spread {spread:.3f}. The pseudo-label diagnostics below "
        "show where the gain is lost."
    )


def _pseudo_table(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["pseudo_mae_trusted", "pseudo_mae_untrusted", "supervised_mae_unlabelled"]
    st = runs[runs["method"].isin(["self_training", "both"])]
    if st.empty or not set(cols) <= set(st.columns):
        return pd.DataFrame()
    g = st.groupby(["fraction", "method"], sort=False)
    extra = [c for c in ("disagreement_error_spearman",) if c in st.columns]
    out = g[cols + extra + ["trusted_share", "n_iter"]].mean()
    return out.reset_index().assign(fraction=lambda d: d["fraction"].map("{:.0%}".format))


def _bland_altman_figure(result: BMDStudyResult, fraction=0.25):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from skddh.plotting import BlandAltmanDisplay

    pred = result.predictions
    fractions = np.sort(pred["fraction"].unique())
    fraction = fractions[np.argmin(np.abs(fractions - fraction))]
    seed = result.seeds[0]
    methods = [m for m in BMD_METHODS if m in set(pred["method"])]
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.8), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, method in zip(axes, methods):
        p = pred[
            (pred["fraction"] == fraction) & (pred["method"] == method) & (pred["seed"] == seed)
        ]
        BlandAltmanDisplay.from_predictions(
            p["dexa"], p["predicted"], ax=ax, name=method, reference_name="DEXA", units="g/cm$^2$"
        )
        ax.set_title(f"{method}, {fraction:.0%} labelled, seed {seed}", fontsize=9)
    fig.tight_layout()
    return fig


def _r_figure(result: BMDStudyResult):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    s = result.summary
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for method in [m for m in BMD_METHODS if m in set(s["method"])]:
        d = s[s["method"] == method].sort_values("fraction")
        ax.errorbar(
            100 * d["fraction"],
            d["pearson_r_mean"],
            yerr=d["pearson_r_std"].fillna(0),
            marker="o",
            capsize=3,
            label=method,
        )
    ax.axhline(PAPER_PEARSON_R, color="grey", ls="--", lw=1, label="paper (real X-rays)")
    ax.set_xlabel("labelled training patients (%)")
    ax.set_ylabel("Pearson r, predicted vs DEXA BMD")
    ax.set_title(f"Test patients, mean ± std over {len(result.seeds)} seed(s)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_bmd_report(result: BMDStudyResult, out: str | Path, *, command: str = "") -> Path:
    """Write the BMD study's tables, figures and ``report.md`` (last) into ``out``.

    Parameters
    ----------
    result : BMDStudyResult
        From :func:`~skddh.studies.bmd.run_bmd_study`.
    out : str or Path
        Output directory (created).
    command : str, default=""
        The command that produced it, for the report.

    Returns
    -------
    Path
        ``out/report.md``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_to_csv(result.runs, out / "bmd_runs.csv", index=False)
    atomic_to_csv(result.summary, out / "bmd_summary.csv", index=False)
    atomic_to_csv(result.comparison, out / "bmd_comparison.csv", index=False)
    atomic_to_csv(result.predictions, out / "bmd_predictions.csv", index=False)
    import matplotlib.pyplot as plt

    for name, fig in (
        ("bland_altman.png", _bland_altman_figure(result)),
        ("pearson_r.png", _r_figure(result)),
    ):
        atomic_savefig(fig, out / name, dpi=120)
        plt.close(fig)
    cfg = result.config
    runs = result.runs
    prevalence = runs["prevalence"].mean()
    n_lab = runs.groupby("fraction")["n_labelled_images"].mean()
    lines = [
        "# Semi-supervised BMD from hip radiographs (synthetic cohort)",
        "",
        "SYNTHETIC DATA FOR METHOD DEVELOPMENT. NOT FOR CLINICAL USE.",
        "",
        f"Seeds {', '.join(map(str, result.seeds))}; {cfg['n_patients']} patients per cohort at "
        f"{cfg['image_size']} px; {int(runs['n_test_images'].iloc[0])} test images of "
        "held-out patients (osteoporosis prevalence by "
        f"DEXA T <= -2.5: {prevalence:.1%}). Labelled training images per fraction: "
        + ", ".join(f"{f:.0%}: {v:.0f}" for f, v in n_lab.items())
        + f". Machine: {platform.machine()}, {platform.system()}, python "
        f"{platform.python_version()}." + (f" Command: `{command}`." if command else ""),
        "",
        "Methods, all on one regressor: "
        + (
            f"a {cfg.get('backbone', 'resnet18')} CNN fine-tuned end to end on the images "
            "(`FineTuningRegressor`)"
            if cfg["model"] == "finetune"
            else f"the MLP head (`MeasurementRegressor`) on the images average-pooled to "
            f"{cfg['pool_size']} x {cfg['pool_size']} pixels (the small scale; see "
            "`skddh.studies.bmd` for why not a CNN or SimSiam features on 2 CPU cores)"
        )
        + ":",
        "",
        *[f"- `{m}`: {t}" for m, t in _METHOD_TEXT.items() if m in set(runs["method"])],
        "",
        "## Verdict",
        "",
        _verdict(result),
        "",
        "## Agreement with DEXA (test patients, mean ± std over seeds)",
        "",
        f"The paper's r = {PAPER_PEARSON_R} is on 1,090 real radiographs of 819 patients; ours "
        "are synthetic, so compare the methods with each other, not the level with the paper.",
        "",
        _md(_accuracy_table(result.summary), index=False),
        "",
        "![Pearson r against the labelled fraction](pearson_r.png)",
        "",
        "## Gain over supervised-only (paired by seed)",
        "",
        _md(
            result.comparison.assign(fraction=lambda d: d["fraction"].map("{:.0%}".format)),
            index=False,
        )
        if not result.comparison.empty
        else "(no supervised baseline run)",
        "",
        "## Pseudo-labels (self-training runs)",
        "",
        "MAE against the hidden DEXA of the unlabelled training images: of the pseudo-labels "
        "trusted in the final fit and of those left out, beside the supervised-only model's "
        "error on the same images (what naive pseudo-labelling would start from), and the "
        "Spearman correlation between a pseudo-label's disagreement (the trust criterion) "
        "and its actual error: near 0, the criterion cannot tell good pseudo-labels from bad.",
        "",
    ]
    pseudo = _pseudo_table(runs)
    lines += [_md(pseudo, index=False) if not pseudo.empty else "(no self-training run)", ""]
    lines += [
        "Would a better trust criterion help? `benchmarks/bench_bmd_pseudo_labels.py` refits "
        "the small-scale regressor on the pseudo-labels an oracle would trust (the half truly "
        "closest to DEXA), and on true labels for those rows and for a random half; its "
        "figures and reading are in `benchmarks/README.md`.",
        "",
    ]
    lines += [
        "## Osteoporosis screening (DEXA T <= -2.5; T-score of the predicted BMD)",
        "",
        _md(_screening_table(result.summary), index=False),
        "",
        "## Bland-Altman (first seed, 25 % labelled)",
        "",
        "![Bland-Altman plots](bland_altman.png)",
        "",
        f"Seconds: cohorts and inputs {result.timings.get('cohort', 0):.0f}, fits "
        f"{result.timings.get('fits', 0):.0f}.",
        "",
        "The adaptive triplet loss follows Zheng et al. (MICCAI 2021); a patent application "
        "covers their method (US 2022/0309651 A1): check before commercial use.",
        "",
    ]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
