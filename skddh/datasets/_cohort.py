"""``make_hip_cohort``: the synthetic paired ultrasound / X-ray study."""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from skddh.datasets._latent import (
    DEFAULT_CORRELATION,
    check_correlation,
    draw_hips,
    draw_subjects,
    rate,
)
from skddh.datasets._measure import measure_xr
from skddh.datasets._registry import SyntheticImageRegistry
from skddh.datasets._render import (
    CHUNK,
    measured_us,
    render_us_images,
    render_xr_images,
    take,
    us_drawn_values,
)
from skddh.datasets._xr_phantom import draw_xr_geometry

#: Subject-level split of the paper's study: train 30, calibration 7, test 38 of 75.
PAPER_SPLIT = (30, 7, 38)
SPLIT_NAMES = ("train", "calibration", "test")

DESCR = """\
Synthetic paired hip ultrasound / X-ray cohort (skddh.datasets.make_hip_cohort)

SYNTHETIC DATA FOR METHOD DEVELOPMENT. NOT FOR CLINICAL USE. No real patient appears here.

Each infant has two hips whose latent measurements (Graf alpha, beta, femoral head coverage;
X-ray acetabular index and centre-edge angle) come from a Gaussian copula with published
marginals and correlations. Ultrasound images (coronal Graf planes) and AP pelvis radiographs
are *drawn from* that geometry; every label is measured back off the drawn landmarks, then read
by simulated raters with published inter-observer noise. Subjects are split train /
calibration / test at subject level, and every US hip is paired with the same subject's and
side's X-ray hip. The docstrings of skddh.datasets (make_hip_cohort and the modules it draws
with) give the spec and its sources.
"""


def _split_counts(n: int, proportions) -> np.ndarray:
    """Largest-remainder rounding of ``n`` subjects into the given proportions."""
    p = np.asarray(proportions, float)
    raw = n * p / p.sum()
    counts = np.floor(raw).astype(int)
    counts[np.argsort(raw - counts)[::-1][: n - counts.sum()]] += 1
    return counts


def _seed_sequence(random_state) -> np.random.SeedSequence:
    if isinstance(random_state, np.random.RandomState):
        random_state = int(random_state.randint(np.iinfo(np.int32).max))
    if isinstance(random_state, np.random.Generator):
        random_state = int(random_state.integers(np.iinfo(np.int64).max))
    return np.random.SeedSequence(random_state)


@validate_params(
    {
        "n_subjects": [Interval(Integral, 1, None, closed="left")],
        "preset": [StrOptions({"registry", "screening"})],
        "image_size": [Interval(Integral, 16, 1024, closed="both")],
        "n_registry_us": [Interval(Integral, 0, None, closed="left")],
        "n_registry_xr": [Interval(Integral, 0, None, closed="left")],
        "us_images_per_hip": [Interval(Real, 1, 3, closed="both")],
        "repeat_xr_rate": [Interval(Real, 0, 1, closed="both")],
        "label_noise": [StrOptions({"clinical", "hard", "none"})],
        "n_raters": [Interval(Integral, 1, None, closed="left")],
        "split": ["array-like"],
        "correlation": ["array-like", None],
        "lr_correlation": [Interval(Real, -1, 1, closed="neither")],
        "pelvis_images": ["boolean"],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_hip_cohort(
    n_subjects=75,
    *,
    preset="registry",
    image_size=128,
    n_registry_us=2000,
    n_registry_xr=1000,
    us_images_per_hip=1.64,
    repeat_xr_rate=0.02,
    label_noise="clinical",
    n_raters=2,
    split=PAPER_SPLIT,
    correlation=None,
    lr_correlation=0.5,
    pelvis_images=True,
    n_jobs=None,
    random_state=None,
) -> Bunch:
    """Make a synthetic paired infant-hip cohort: ultrasound, X-ray, pairs and registries.

    The default is the study shape of the DDH paper (arXiv 2511.18457): 75 subjects split
    30 / 7 / 38 at subject level, about 321 labelled images, about 77 matched US-hip /
    X-ray-hip pairs in the test split, from a referral ("registry") population with many
    borderline hips. Synthetic, for method development; not for clinical use.

    Parameters
    ----------
    n_subjects : int, default=75
        Number of infants (two hips each).
    preset : {"registry", "screening"}, default="registry"
        Population: a referral registry (Graf I ~68 %, many borderline hips) or newborn
        screening (Graf I ~88 %).
    image_size : int, default=128
        Side in pixels of ultrasound images and per-hip X-ray views. AP pelvis images are
        twice that.
    n_registry_us, n_registry_xr : int, default=2000, 1000
        Sizes of the unlabelled registries (paper: 37,186 and 19,546). They are rendered
        lazily, chunk by chunk (see :class:`SyntheticImageRegistry`), so any size costs
        nothing until images are requested.
    us_images_per_hip : float in [1, 3], default=1.64
        Mean ultrasound images per hip (1 to 3 each); 1.64 gives the paper's ~321 images.
    repeat_xr_rate : float, default=0.02
        Probability that a subject has a second AP pelvis radiograph.
    label_noise : {"clinical", "hard", "none"}, default="clinical"
        Rater noise: "clinical" per-reading SD alpha 2.2 deg, beta 4.3 deg, coverage 4.5 pp,
        AI 2 deg, CE 3 deg plus a rater bias N(0, 1); "hard" is noisier; "none" gives the
        drawn values exactly.
    n_raters : int, default=2
        Raters per image; targets are their consensus (mean; for IHDI the rounded-up median).
    split : array-like of 3 numbers, default=(30, 7, 38)
        Relative sizes of the train / calibration / test subject splits.
    correlation : array-like of shape (5, 5), default=None
        Copula correlation over (alpha, beta, FHC, AI, CE); None uses the default: alpha-FHC
        0.73 (the Oxford NDORMS data), every other entry an assumption.
    lr_correlation : float, default=0.5
        Correlation between a subject's left and right hips (an assumption).
    pelvis_images : bool, default=True
        Also render the whole AP pelvis radiographs (``xr.pelvis_images``).
    n_jobs : int, default=None
        Parallel chunks (joblib). Results do not depend on it.
    random_state : int, RandomState instance or None, default=None
        Seed; the same seed gives the same cohort, whatever ``n_jobs``.

    Returns
    -------
    cohort : Bunch
        - ``us``: Bunch with ``images`` (n, H, W) uint8; ``targets`` DataFrame (``alpha``,
          ``beta`` in degrees, ``coverage`` in percent), the raters' consensus; ``subject``,
          ``side``, ``image_id``, ``hip_id``, ``split`` and ``age_weeks`` arrays; ``truth``
          (hip-level latent values on the standard plane), ``drawn`` (what this image shows:
          alpha, beta, coverage, plane offset, ``standard_plane``), ``landmarks`` (pixels),
          ``acquisition`` (nuisance parameters, ``pixel_spacing_mm``), ``ratings`` (long).
        - ``xr``: the same for per-hip views of AP pelvis radiographs (``ai``, ``ce`` signed,
          ``ihdi`` 1-4). One radiograph per subject (a repeat with ``repeat_xr_rate``) gives
          one view per hip; left hips are mirrored so lateral is always on the image left.
          ``pelvis_images`` / ``pelvis_index`` hold the whole radiographs.
        - ``pairs``: DataFrame, one row per X-ray hip view, matched to the same subject's and
          side's ultrasound hip (``us_image_id`` is its image closest to the standard plane),
          with both modalities' consensus labels and the truth, and ``xr_abnormal``
          (AI > 30 or IHDI >= 2) as a paired X-ray finding.
        - ``split``: Series subject -> "train" / "calibration" / "test".
        - ``subjects``, ``hips``: the latent tables.
        - ``registry_us``, ``registry_xr``: :class:`SyntheticImageRegistry` of unlabelled
          images for self-supervised pretraining.
        - ``DESCR``.

    Examples
    --------
    >>> from skddh.datasets import make_hip_cohort
    >>> cohort = make_hip_cohort(n_subjects=10, image_size=32, random_state=0)
    >>> cohort.us.images.dtype, cohort.us.images.shape[1:]
    (dtype('uint8'), (32, 32))
    >>> list(cohort.us.targets.columns), list(cohort.xr.targets.columns)
    (['alpha', 'beta', 'coverage'], ['ai', 'ce', 'ihdi'])
    >>> sorted(cohort.split.unique())
    ['calibration', 'test', 'train']
    """
    split = np.asarray(split, dtype=float)
    if split.shape != (3,) or np.any(split < 0) or split.sum() <= 0:
        raise ValueError(
            f"split must be three non-negative sizes (train, calibration, test), got {split}."
        )
    corr = DEFAULT_CORRELATION if correlation is None else check_correlation(correlation)
    root = _seed_sequence(random_state)
    s_latent, s_us, s_xr, s_reg_us, s_reg_xr, s_rate = root.spawn(6)
    rng = np.random.default_rng(s_latent)

    subjects = draw_subjects(n_subjects, preset, rng)
    hips = draw_hips(subjects, preset, rng, correlation=corr, lr_correlation=lr_correlation)
    counts = _split_counts(n_subjects, split)
    assignment = np.repeat(np.array(SPLIT_NAMES), counts)[rng.permutation(n_subjects)]
    subjects["split"] = assignment
    split_series = pd.Series(assignment, index=subjects["subject"].to_numpy(), name="split")
    split_series.index.name = "subject"

    # ---- ultrasound: 1-3 images per hip -------------------------------------------------
    p_extra = (us_images_per_hip - 1.0) / 2.0
    per_hip = 1 + rng.binomial(2, p_extra, len(hips))
    us_hips = hips.loc[hips.index.repeat(per_hip)].reset_index(drop=True)
    drawn = us_drawn_values(us_hips, rng)
    age_weeks = us_hips["subject"].map(subjects.set_index("subject")["age_us_weeks"]).to_numpy()
    n_us = len(us_hips)
    us_seeds = s_us.spawn(-(-n_us // CHUNK))
    images, landmarks, acq = render_us_images(drawn, age_weeks, image_size, us_seeds, n_jobs)
    measured = measured_us(landmarks)  # the labels are measured off the drawn landmarks
    rate_rng = np.random.default_rng(s_rate)
    consensus, ratings = rate(
        measured,
        noise=label_noise,
        n_raters=n_raters,
        rng=rate_rng,
        subject=us_hips["subject"].to_numpy(),
    )
    us_ids = np.array([f"US{i:06d}" for i in range(n_us)])
    us = Bunch(
        images=images,
        targets=pd.DataFrame(
            {
                "alpha": consensus["alpha"].to_numpy(),
                "beta": consensus["beta"].to_numpy(),
                "coverage": 100.0 * consensus["fhc"].to_numpy(),
            }
        ),
        subject=us_hips["subject"].to_numpy(),
        side=us_hips["side"].to_numpy(),
        hip_id=us_hips["hip_id"].to_numpy(),
        image_id=us_ids,
        split=us_hips["subject"].map(split_series).to_numpy(),
        age_weeks=age_weeks,
        truth=pd.DataFrame(
            {
                "alpha": us_hips["alpha"].to_numpy(),
                "beta": us_hips["beta"].to_numpy(),
                "coverage": 100.0 * us_hips["fhc"].to_numpy(),
                "graf_type": us_hips["graf_type"].to_numpy(),
                "decentred": us_hips["decentred"].to_numpy(),
            }
        ),
        drawn=pd.DataFrame(
            {
                "alpha": measured["alpha"].to_numpy(),
                "beta": measured["beta"].to_numpy(),
                "coverage": 100.0 * measured["fhc"].to_numpy(),
                "alpha_img": drawn["alpha_img"].to_numpy(),
                "plane_offset": drawn["plane_offset"].to_numpy(),
                "standard_plane": drawn["standard_plane"].to_numpy(),
            }
        ),
        landmarks=landmarks,
        acquisition=acq,
        ratings=_ratings_frame(ratings, us_ids, scale={"fhc": ("coverage", 100.0)}),
    )

    # ---- X-ray: one AP pelvis per subject (sometimes a repeat), a view per hip ----------
    geom_subjects = draw_xr_geometry(hips, subjects["age_xr_months"].to_numpy(), rng)
    n_films = 1 + (rng.random(n_subjects) < repeat_xr_rate)
    film_subject = np.repeat(np.arange(n_subjects), n_films)
    geom = take(geom_subjects, film_subject)
    xr_seeds = s_xr.spawn(-(-len(film_subject) // (CHUNK // 2)))
    xr_images, xr_marks, film_acq, pelvis = render_xr_images(
        geom,
        image_size,
        xr_seeds,
        pelvis_size=2 * image_size if pelvis_images else None,
        n_jobs=n_jobs,
    )
    xr_measured = measure_xr(xr_marks)
    view_subject = np.repeat(film_subject, 2)
    view_side = np.tile(["R", "L"], len(film_subject))
    xr_hips = (
        hips.set_index("hip_id")
        .loc[[f"{subjects['subject'].iloc[s]}{side}" for s, side in zip(view_subject, view_side)]]
        .reset_index()
    )
    xr_consensus, xr_ratings = rate(
        xr_measured,
        noise=label_noise,
        n_raters=n_raters,
        rng=rate_rng,
        subject=xr_hips["subject"].to_numpy(),
        integer_columns=("ihdi",),
    )
    film_ids = np.array([f"XP{i:06d}" for i in range(len(film_subject))])
    xr_ids = np.array([f"XR{i:06d}" for i in range(len(view_subject))])
    xr = Bunch(
        images=xr_images,
        targets=xr_consensus[["ai", "ce", "ihdi"]].reset_index(drop=True),
        subject=xr_hips["subject"].to_numpy(),
        side=view_side,
        hip_id=xr_hips["hip_id"].to_numpy(),
        image_id=xr_ids,
        pelvis_id=np.repeat(film_ids, 2),
        split=xr_hips["subject"].map(split_series).to_numpy(),
        age_months=subjects["age_xr_months"].to_numpy()[view_subject],
        truth=pd.DataFrame(
            {
                "ai": xr_hips["ai"].to_numpy(),
                "ce": xr_hips["ce"].to_numpy(),
                "ihdi_target": xr_hips["ihdi_target"].to_numpy(),
            }
        ),
        drawn=xr_measured.reset_index(drop=True),
        landmarks=xr_marks.reset_index(drop=True),
        acquisition=film_acq.iloc[np.repeat(np.arange(len(film_subject)), 2)].reset_index(
            drop=True
        ),
        ratings=_ratings_frame(xr_ratings, xr_ids),
        pelvis_images=pelvis,
        pelvis_index=pd.DataFrame(
            {"pelvis_id": film_ids, "subject": subjects["subject"].to_numpy()[film_subject]}
        ),
    )

    pairs = _pairs(us, xr)
    registry_us = SyntheticImageRegistry("us", n_registry_us, image_size, preset, s_reg_us)
    registry_xr = SyntheticImageRegistry("xr", n_registry_xr, image_size, preset, s_reg_xr)
    return Bunch(
        us=us,
        xr=xr,
        pairs=pairs,
        split=split_series,
        subjects=subjects,
        hips=hips,
        registry_us=registry_us,
        registry_xr=registry_xr,
        DESCR=DESCR,
    )


def _ratings_frame(long: pd.DataFrame, ids, scale=None) -> pd.DataFrame:
    out = long.assign(image_id=np.asarray(ids)[long["image_index"].to_numpy()])
    for old, (new, factor) in (scale or {}).items():
        sel = out["measurement"] == old
        out.loc[sel, "value"] = out.loc[sel, "value"] * factor
        out.loc[sel, "measurement"] = new
    return out[["image_id", "subject", "rater", "measurement", "value"]]


def _pairs(us: Bunch, xr: Bunch) -> pd.DataFrame:
    """Match every X-ray hip view with the same subject's and side's ultrasound hip."""
    us_frame = pd.DataFrame(
        {
            "hip_id": us.hip_id,
            "us_image_id": us.image_id,
            "abs_offset": np.abs(us.drawn["plane_offset"].to_numpy()),
            "n_us_images": 1,
        }
    )
    us_frame = pd.concat([us_frame, us.targets.add_prefix("us_")], axis=1)
    us_frame = pd.concat(
        [us_frame, us.truth[["alpha", "beta", "coverage"]].add_suffix("_true")], axis=1
    )
    counts = us_frame.groupby("hip_id")["n_us_images"].sum()
    best = us_frame.sort_values(["hip_id", "abs_offset"]).groupby("hip_id").head(1)
    best = best.drop(columns=["abs_offset", "n_us_images"]).set_index("hip_id")
    best["n_us_images"] = counts
    xr_frame = pd.DataFrame(
        {
            "hip_id": xr.hip_id,
            "subject": xr.subject,
            "side": xr.side,
            "split": xr.split,
            "xr_image_id": xr.image_id,
            "pelvis_id": xr.pelvis_id,
        }
    )
    xr_frame = pd.concat(
        [xr_frame, xr.targets.add_prefix("xr_"), xr.drawn.add_suffix("_true")], axis=1
    )
    pairs = xr_frame.join(best, on="hip_id", how="inner")
    pairs["xr_abnormal"] = (pairs["xr_ai"] > 30.0) | (pairs["xr_ihdi"] >= 2)
    pairs.insert(0, "pair_id", [f"P{i:05d}" for i in range(len(pairs))])
    return pairs.reset_index(drop=True)
