"""``make_bmd_cohort``: hip radiographs for semi-supervised bone mineral density regression.

The study shape of Zheng et al. (MICCAI 2021): 1,090 hip radiographs of 819 patients, a DEXA
femoral-neck BMD for some of them, the rest unlabelled. Patients carry a true BMD drawn from
published reference data; images are rendered from it (:mod:`skddh.datasets._bmd_phantom`)
and the labels are a simulated DEXA read of it.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import pandas as pd
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval, validate_params

from skddh.datasets._bmd_phantom import chunk_size, draw_femur_anatomy, render_bmd_images
from skddh.datasets._cohort import _seed_sequence, _split_counts

#: Femoral-neck BMD (g/cm^2, Hologic) of young-adult (20-29 y) non-Hispanic white women in
#: NHANES III (Looker et al. 1998): the T-score reference for both sexes (ISCD).
BMD_YOUNG_ADULT_MEAN = 0.858
#: Its standard deviation (g/cm^2).
BMD_YOUNG_ADULT_SD = 0.120
#: Osteoporosis: a T-score at or below -2.5 (WHO 1994).
OSTEOPOROSIS_T_SCORE = -2.5
#: Young-adult male femoral-neck mean (g/cm^2) used only to place the men's curve.
BMD_YOUNG_ADULT_MEAN_MEN = 0.93
SPLIT_NAMES = ("train", "test")

DESCR = """\
Synthetic hip radiographs with femoral-neck BMD (skddh.datasets.make_bmd_cohort)

SYNTHETIC DATA FOR METHOD DEVELOPMENT. NOT FOR CLINICAL USE. No real patient appears here.

An older hospital population (age 50-90, 70 % women) with a true femoral-neck BMD from the
NHANES III reference (Looker et al. 1998), an age decline that is faster in women, a BMI
effect and a patient-level random effect. Proximal-femur crops are rendered from it: cortical
thickness, trabecular density and trabecular texture follow BMD; exposure, position, rotation,
femoral rotation, magnification, scatter and photon noise are drawn per image independently of
it; soft-tissue thickness follows BMI (a realistic confounder, since BMI also raises BMD). One
DEXA read per patient (femoral-neck precision as a CV) is the label; patients are split train /
test, and only a fraction of the train patients keep their DEXA (the others are unlabelled,
NaN). T-scores use the young-adult female reference for both sexes; osteoporosis is
T <= -2.5.
"""


def t_score(bmd):
    """T-score of femoral-neck BMD against the NHANES III young-adult female reference.

    ``T = (bmd - 0.858) / 0.120`` for both sexes (the ISCD convention).

    Parameters
    ----------
    bmd : float or array-like
        Femoral-neck areal BMD in g/cm^2.

    Returns
    -------
    float or ndarray

    Examples
    --------
    >>> from skddh.datasets._bmd import t_score
    >>> round(t_score(0.558), 6)
    -2.5
    >>> t_score([0.858, 0.978]).round(6).tolist()
    [0.0, 1.0]
    """
    out = (np.asarray(bmd, float) - BMD_YOUNG_ADULT_MEAN) / BMD_YOUNG_ADULT_SD
    return float(out) if out.ndim == 0 else out


def _draw_patients(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Age, sex, BMI, soft-tissue thickness and true BMD of ``n`` patients."""
    age = 50.0 + 40.0 * rng.beta(2.2, 1.5, n)
    female = rng.random(n) < 0.7
    bmi = np.clip(np.where(female, rng.normal(24.5, 4.2, n), rng.normal(24.8, 3.6, n)), 15.0, 45.0)
    # women: 0.858 at 20-29, 0.78 at 50, then -0.0058 / year; men: 0.93 young, 0.86 at 50,
    # then -0.0040 / year; +0.008 g/cm^2 per kg/m^2 of BMI; patient effect SD 0.10
    mean = np.where(female, 0.78 - 0.0058 * (age - 50.0), 0.86 - 0.0040 * (age - 50.0))
    bmd = np.clip(mean + 0.008 * (bmi - 25.0) + rng.normal(0.0, 0.10, n), 0.25, 1.40)
    soft = 10.0 * (4.0 + 0.75 * bmi) * np.exp(rng.normal(0.0, 0.05, n))
    t = t_score(bmd)
    return pd.DataFrame(
        {
            "subject": [f"P{i:05d}" for i in range(n)],
            "age": age,
            "sex": np.where(female, "F", "M"),
            "bmi": bmi,
            "soft_tissue_mm": soft,
            "bmd": bmd,
            "t_score": t,
            "osteoporosis": t <= OSTEOPOROSIS_T_SCORE,
        }
    )


def _labelled_count(n_train: int, fraction: float) -> int:
    """Round half up, at least one labelled train patient when there are any."""
    if n_train == 0:
        return 0
    return int(min(n_train, max(1, np.floor(fraction * n_train + 0.5))))


@validate_params(
    {
        "n_patients": [Interval(Integral, 1, None, closed="left")],
        "images_per_patient": [Interval(Real, 1, 3, closed="both")],
        "image_size": [Interval(Integral, 16, 512, closed="both")],
        "labelled_fraction": [Interval(Real, 0, 1, closed="right")],
        "split": ["array-like"],
        "dexa_precision": [Interval(Real, 0, 0.2, closed="both")],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_bmd_cohort(
    n_patients=819,
    *,
    images_per_patient=1.33,
    image_size=64,
    labelled_fraction=0.25,
    split=(0.8, 0.2),
    dexa_precision=0.02,
    n_jobs=None,
    random_state=None,
) -> Bunch:
    """Make a synthetic cohort of hip radiographs with femoral-neck BMD for semi-supervision.

    The default is the study shape of Zheng et al. (MICCAI 2021): 819 patients, about 1,090
    proximal-femur crops (1 to 3 per patient, mean 1.33), one DEXA femoral-neck BMD per
    patient. Patients are split train / test; a ``labelled_fraction`` of the train patients
    keep their DEXA, the other train patients are unlabelled (target NaN, the convention of
    :class:`skddh.models.SelfTrainingRegressor`); every test patient is labelled.
    Synthetic, for method development; not for clinical use.

    Population. Age 50 + 40 Beta(2.2, 1.5) years (mean ~74, an older hospital population),
    70 % women, BMI N(24.5, 4.2) (women) or N(24.8, 3.6) (men) clipped to [15, 45]. True
    femoral-neck BMD (g/cm^2, Hologic scale): young-adult means 0.858 (women, SD 0.120) and
    about 0.93 (men) from NHANES III [1]_; 0.78 (women) and 0.86 (men) at 50, then a decline
    of 0.0058 (women, post-menopausal) and 0.0040 g/cm^2 a year (men), close to the NHANES III
    age-band means; +0.008 g/cm^2 per kg/m^2 of BMI (higher BMI, higher BMD [4]_); a
    patient-level random effect N(0, 0.10). T-score ``(bmd - 0.858) / 0.120`` for both sexes,
    the young-adult white female reference recommended by the ISCD [3]_; osteoporosis is
    T <= -2.5 [2]_. Expected osteoporosis prevalence: about 18 % overall (about 25 % of the
    women, 3 % of the men), in the range NHANES III reports for women 50+ (13-18 %) and men
    with female cut-offs (1-4 %) [5]_, a little higher for an older hospital population.

    Images. Cortical thickness of the neck and shaft, trabecular density and trabecular
    texture (line frequency and contrast) follow BMD, each with a patient-level anatomical
    factor independent of it. Exposure (counts, window, gain, offset, gamma), in-plane
    rotation (+-8 deg), femoral rotation (neck foreshortening), shift (+-6 mm),
    magnification (0.9-1.12), scatter, blur and photon noise are drawn per image
    independently of BMD, and redrawn for a patient's repeat images (which share BMD and
    anatomy). Soft-tissue thickness follows BMI and adds a scatter haze that lowers bone
    contrast: since BMI also raises BMD, it is a realistic confounder.

    Labels. One DEXA per patient, ``bmd * (1 + dexa_precision * N(0, 1))`` reported to
    0.001 g/cm^2; femoral-neck short-term precision is 1.5-2.3 % CV on current scanners
    [6]_, the ISCD precision assessment [3]_ expresses it per site.

    Parameters
    ----------
    n_patients : int, default=819
        Number of patients.
    images_per_patient : float in [1, 3], default=1.33
        Mean radiographs per patient (1 to 3 each); 1.33 gives the paper's ~1,090 images.
    image_size : int in [16, 512], default=64
        Side of the square crops in pixels (about 120 mm field of view before magnification).
    labelled_fraction : float in (0, 1], default=0.25
        Share of the train patients whose DEXA is available (rounded half up, at least one).
    split : array-like of 2 numbers, default=(0.8, 0.2)
        Relative sizes of the train / test patient splits (largest-remainder rounding).
    dexa_precision : float in [0, 0.2], default=0.02
        DEXA precision error as a coefficient of variation (0.02 = 2 %).
    n_jobs : int, default=None
        Parallel chunks (joblib). Results do not depend on it.
    random_state : int, RandomState instance or None, default=None
        Seed; the same seed gives the same cohort, whatever ``n_jobs``.

    Returns
    -------
    cohort : Bunch
        - ``images``: (n, image_size, image_size) uint8, lateral on the image left.
        - ``targets``: DataFrame with column ``bmd`` (the DEXA read, g/cm^2), NaN on the
          unlabelled train patients' images.
        - ``labelled``: bool array, whether the image's patient has its DEXA.
        - ``subject``, ``image_id``, ``side`` (``"L"``/``"R"``, the hip shown), ``split``
          (``"train"``/``"test"``), ``age`` (years), ``sex`` (``"F"``/``"M"``): per image.
        - ``truth``: DataFrame per image: ``bmd`` (true), ``t_score``, ``osteoporosis``,
          ``age``, ``sex``, ``bmi``.
        - ``acquisition``: DataFrame of the per-image nuisance draws (and
          ``pixel_spacing_mm``).
        - ``patients``: DataFrame per patient: demographics, ``soft_tissue_mm``, true ``bmd``,
          ``t_score``, ``osteoporosis``, ``dexa_bmd`` (every patient's read), ``split``,
          ``labelled``, ``n_images``.
        - ``anatomy``: DataFrame per patient of the femur geometry (mm, degrees) and the
          BMD-following factors.
        - ``DESCR``.

    References
    ----------
    .. [1] Looker AC, Wahner HW, Dunn WL, et al. Updated data on proximal femur bone mineral
       levels of US adults. Osteoporos Int 1998;8:468-489.
    .. [2] WHO Study Group. Assessment of fracture risk and its application to screening for
       postmenopausal osteoporosis. WHO Technical Report Series 843, 1994.
    .. [3] International Society for Clinical Densitometry. Official Positions (adult):
       T-score reference database; precision assessment and least significant change.
    .. [4] De Laet C, Kanis JA, Oden A, et al. Body mass index as a predictor of fracture
       risk: a meta-analysis. Osteoporos Int 2005;16:1330-1338.
    .. [5] Looker AC, Orwoll ES, Johnston CC Jr, et al. Prevalence of low femoral bone
       density in older U.S. adults from NHANES III. J Bone Miner Res 1997;12:1761-1768.
    .. [6] Wilson KE, Smith AP. Monitoring BMD with DXA: short- and long-term precision.
       Hologic white paper (femoral neck mean CV 1.50 % Hologic, 1.97 % GE Lunar,
       2.30 % Norland).
    .. [7] Zheng K, Wang Y, Zhou X, et al. Semi-supervised learning for bone mineral density
       estimation in hip X-ray images. MICCAI 2021.

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.datasets import make_bmd_cohort
    >>> cohort = make_bmd_cohort(n_patients=20, image_size=32, random_state=0)
    >>> cohort.images.dtype, cohort.images.shape[1:]
    (dtype('uint8'), (32, 32))
    >>> list(cohort.targets.columns)
    ['bmd']
    >>> bool(np.isnan(cohort.targets["bmd"][~cohort.labelled]).all())
    True
    >>> sorted(set(cohort.split))
    ['test', 'train']
    """
    split = np.asarray(split, dtype=float)
    if split.shape != (2,) or not np.isfinite(split).all() or np.any(split < 0) or split.sum() <= 0:
        raise ValueError(f"split must be two non-negative sizes (train, test), got {split}.")
    root = _seed_sequence(random_state)
    s_patients, s_images, s_dexa, s_label = root.spawn(4)
    rng = np.random.default_rng(s_patients)

    patients = _draw_patients(n_patients, rng)
    anatomy = draw_femur_anatomy(patients["bmd"], patients["sex"], rng)
    counts = _split_counts(n_patients, split)
    patients["split"] = np.repeat(np.array(SPLIT_NAMES), counts)[rng.permutation(n_patients)]
    n_images = 1 + rng.binomial(2, (images_per_patient - 1.0) / 2.0, n_patients)
    patients["n_images"] = n_images
    # the DEXA and who keeps it come from their own streams: changing labelled_fraction
    # leaves the reads, the images and the split as they were
    dexa = patients["bmd"].to_numpy() * (
        1.0 + dexa_precision * np.random.default_rng(s_dexa).standard_normal(n_patients)
    )
    patients["dexa_bmd"] = np.round(dexa, 3)
    train = np.flatnonzero(patients["split"].to_numpy() == "train")
    keep = np.random.default_rng(s_label).permutation(train)[
        : _labelled_count(len(train), labelled_fraction)
    ]
    labelled = patients["split"].to_numpy() == "test"
    labelled[keep] = True
    patients["labelled"] = labelled
    anatomy.insert(0, "subject", patients["subject"].to_numpy())

    who = np.repeat(np.arange(n_patients), n_images)
    n = len(who)
    sides = np.where(rng.random(n) < 0.5, "L", "R")
    seeds = s_images.spawn(-(-n // chunk_size(image_size)))
    images, acquisition = render_bmd_images(
        anatomy.iloc[who].drop(columns="subject"),
        patients["soft_tissue_mm"].to_numpy()[who],
        image_size,
        seeds,
        n_jobs,
    )
    per_image = patients.iloc[who].reset_index(drop=True)
    lab = per_image["labelled"].to_numpy()
    return Bunch(
        images=images,
        targets=pd.DataFrame({"bmd": np.where(lab, per_image["dexa_bmd"].to_numpy(), np.nan)}),
        labelled=lab,
        subject=per_image["subject"].to_numpy(),
        image_id=np.array([f"BMD{i:06d}" for i in range(n)]),
        side=sides,
        split=per_image["split"].to_numpy(),
        age=per_image["age"].to_numpy(),
        sex=per_image["sex"].to_numpy(),
        truth=per_image[["bmd", "t_score", "osteoporosis", "age", "sex", "bmi"]].copy(),
        acquisition=acquisition,
        patients=patients,
        anatomy=anatomy,
        DESCR=DESCR,
    )
