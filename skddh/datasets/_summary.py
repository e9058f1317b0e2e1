"""Summary table and example figure of a cohort (used by ``skddh demo`` and the docs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.utils import Bunch


def summarize_cohort(cohort: Bunch) -> pd.DataFrame:
    """One row per split: subjects, images, test pairs and the share of abnormal measurements.

    Parameters
    ----------
    cohort : Bunch
        As returned by :func:`make_hip_cohort`.

    Returns
    -------
    DataFrame
        Indexed by split (``train``, ``calibration``, ``test``, ``all``).

    Examples
    --------
    >>> from skddh.datasets import make_hip_cohort, summarize_cohort
    >>> table = summarize_cohort(make_hip_cohort(n_subjects=10, image_size=16, random_state=0))
    >>> int(table.loc["all", "subjects"])
    10
    """
    rows = {}
    for name in ("train", "calibration", "test", "all"):
        us = np.ones(len(cohort.us.split), bool) if name == "all" else cohort.us.split == name
        xr = np.ones(len(cohort.xr.split), bool) if name == "all" else cohort.xr.split == name
        pairs = cohort.pairs if name == "all" else cohort.pairs[cohort.pairs["split"] == name]
        t, x = cohort.us.targets[us], cohort.xr.targets[xr]
        rows[name] = {
            "subjects": int(len(np.unique(cohort.us.subject[us]))),
            "us_images": int(us.sum()),
            "xr_hip_views": int(xr.sum()),
            "pairs": len(pairs),
            "alpha_mean": t["alpha"].mean(),
            "alpha<60": (t["alpha"] < 60).mean(),
            "coverage<50": (t["coverage"] < 50).mean(),
            "ai>30": (x["ai"] > 30).mean(),
            "ihdi>=2": (x["ihdi"] >= 2).mean(),
        }
    return pd.DataFrame(rows).T.astype(
        {"subjects": int, "us_images": int, "xr_hip_views": int, "pairs": int}
    )


def plot_cohort_examples(cohort: Bunch, n: int = 4, *, random_state=0):
    """Figure of ``n`` paired hips: ultrasound, AP pelvis and X-ray hip view with labels.

    Hips are chosen across the alpha range (normal to decentred), preferring radiographs
    without a gonad shield so the pelvis is visible. Landmark lines are drawn on a separate
    copy of each image, never burnt into the data.

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    pairs = cohort.pairs.sort_values("us_alpha", ascending=False).reset_index(drop=True)
    acq = cohort.xr.acquisition.assign(pelvis_id=cohort.xr.pelvis_id)
    shielded = set(acq.loc[acq["shield"].astype(bool), "pelvis_id"])
    clear = pairs[~pairs["pelvis_id"].isin(shielded)].reset_index(drop=True)
    if len(clear) >= n:
        pairs = clear
    pick = np.unique(np.linspace(0, len(pairs) - 1, n).round().astype(int))
    fig, axes = plt.subplots(len(pick), 4, figsize=(12, 3.1 * len(pick)))
    axes = np.atleast_2d(axes)
    us_pos = {k: i for i, k in enumerate(cohort.us.image_id)}
    xr_pos = {k: i for i, k in enumerate(cohort.xr.image_id)}
    film_pos = {k: i for i, k in enumerate(cohort.xr.pelvis_index["pelvis_id"])}
    for row, j in enumerate(pick):
        p = pairs.iloc[j]
        ui, xi = us_pos[p["us_image_id"]], xr_pos[p["xr_image_id"]]
        lm = cohort.us.landmarks.iloc[ui]
        axes[row, 0].imshow(cohort.us.images[ui], cmap="gray", vmin=0, vmax=255)
        axes[row, 0].set_title(
            f"US {p['hip_id']}  alpha {p['us_alpha']:.0f}  beta {p['us_beta']:.0f}  "
            f"cov {p['us_coverage']:.0f}%",
            fontsize=8,
        )
        axes[row, 1].imshow(cohort.us.images[ui], cmap="gray", vmin=0, vmax=255)
        axes[row, 1].plot([lm.iliac_x, lm.rim_x], [lm.iliac_y, lm.rim_y], "y-", lw=0.8)
        axes[row, 1].plot([lm.rim_x, lm.lower_limb_x], [lm.rim_y, lm.lower_limb_y], "r-", lw=0.8)
        axes[row, 1].plot([lm.rim_x, lm.labrum_x], [lm.rim_y, lm.labrum_y], "c-", lw=0.8)
        axes[row, 1].add_patch(
            plt.Circle((lm.head_cx, lm.head_cy), lm.head_r, fill=False, color="m", lw=0.8)
        )
        axes[row, 1].set_title("Graf lines (overlay only)", fontsize=8)
        if cohort.xr.pelvis_images is not None:
            axes[row, 2].imshow(cohort.xr.pelvis_images[film_pos[p["pelvis_id"]]], cmap="gray")
        axes[row, 2].set_title(f"AP pelvis {p['pelvis_id']}", fontsize=8)
        axes[row, 3].imshow(cohort.xr.images[xi], cmap="gray", vmin=0, vmax=255)
        axes[row, 3].set_title(
            f"XR {p['side']} hip  AI {p['xr_ai']:.0f}  CE {p['xr_ce']:.0f}  "
            f"IHDI {int(p['xr_ihdi'])}",
            fontsize=8,
        )
        for ax in axes[row]:
            ax.set_axis_off()
            ax.set_xlim(ax.get_xlim())
    fig.suptitle("skddh synthetic cohort: SYNTHETIC phantoms, not for clinical use", fontsize=10)
    fig.tight_layout()
    return fig
