"""``make_hip_morphology_cohort``: adult AP pelvis radiographs with per-hip morphology labels.

The study shape of Khosravi et al. (Mayo Clinic; seed 001): 500 patients (mean age 47, 49 %
women), one AP pelvis radiograph each; 400 read by two trained raters (the train / validation
pool) and a 100-image hold-out whose ground truth is one fellowship-trained hip surgeon. Each
hip has four findings and the patient's sex: ischial spine sign, cam deformity, dysplasia,
any abnormality (any of the three or another finding), and sex (auxiliary).

Each hip carries measurements drawn first, and the radiograph is rendered from them
(:mod:`skddh.datasets._morphology_phantom`), so every label is in the pixels. Raters read the
*measurements* with noise and threshold them, as a reader with a goniometer would; their
labels disagree near the thresholds.

Clinical facts used (thresholds are the simulator's definitions):

* Cam deformity: alpha angle (Notzli) > 55 deg on the AP view, the threshold the brief and a
  patient-education summary use (miles4hips.org, "Hip dysplasia: what's with all the angles");
  the literature ranges 55-60 deg: van Klij et al., Orthop J Sports Med 2020 (PMC7418265)
  recommend >= 60 deg; the CHECK/Chingford cohorts (Agricola et al., Osteoarthritis Cartilage
  2014;22:218) show a bimodal AP alpha with normal hips below ~60 deg; CT controls average
  48 +- 5 deg, symptomatic cam 67 +- 12 deg (Barrientos et al., J Hip Preserv Surg 2016,
  PMC5005062). Cam is more frequent in men (modelled as +4 deg for men's abnormal hips,
  an assumption on the size).
* Dysplasia: lateral centre-edge angle (Wiberg) < 20 deg dysplastic, 20-25 deg borderline,
  > 25 deg normal (Tannast et al., CORR 2015, PMC4353515: normal LCEA 23-33 deg,
  acetabular index / Tonnis angle 3-13 deg); Tonnis angle normal 0-10 deg, > 10 deg steep
  (dysplastic) roof (miles4hips.org). Rule here: ``LCEA < 20`` or (``LCEA < 25`` and
  ``Tonnis > 10``): borderline coverage counts when the roof is also steep (an assumption of
  the simulator that combines the two criteria). LCEA and Tonnis correlate strongly
  (r = -0.84, Fa et al., Exp Ther Med 2014;8:1934); here Tonnis = 21 - 0.55 LCEA + N(0, 2.5).
  Dysplasia is more frequent in women (LCEA -3 deg in women, an assumption on the size).
* Ischial spine sign: positive when the ischial spine projects medial to the pelvic brim
  (iliopectineal line) on an AP pelvis; a sign of acetabular retroversion, sensitivity 91 %,
  specificity 98 % against the crossover sign (Kalberer et al., CORR 2008;466:677). The
  spines project further into the pelvic cavity in men (anatomy texts), modelled as +1 mm.
* Other findings: minimum joint space width <= 2.0 mm is the radiographic hip OA case
  definition of Jacobsen et al. (Copenhagen City Heart Study, Acta Orthop 2004); normal apical
  JSW 4.2 +- 0.9 mm (Lequesne et al., Ann Rheum Dis 2004;63:1145), narrower in women and
  falling after the fourth decade; osteophytes (here >= 2 mm) more frequent with age and in
  men. ``any_abnormality`` = any of the three labels or another finding.
* Sex from pelvic shape: the female inlet is wider and rounder (oval vs heart-shaped), the
  subpubic angle wider (about 90-100 deg vs 70 deg), the acetabula wider apart, the femoral
  heads smaller (standard anatomy, e.g. Ellis, Clinical Anatomy; subpubic angle on AP pelvis
  radiographs differs by ~30 deg between sexes, Sudanese series, SJMS). Magnitudes here are
  assumptions within those ranges.
* Prevalences (per hip, hold-out) are tuned to the brief: ischial spine sign ~30 %, cam
  ~67 %, dysplasia ~28 %, any abnormality ~76 % (a symptomatic referral population; a
  mixture of "normal" and "abnormal" hips, bilateral in most patients).
* Rater noise ("clinical") is tuned so that Gwet's AC1 between the two raters matches the
  seed: dysplasia 0.83, all abnormalities 0.88, ischial spine sign 0.75, cam 0.61.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import pandas as pd
from sklearn.utils import Bunch
from sklearn.utils._param_validation import Interval, StrOptions, validate_params

from skddh.datasets._cohort import _seed_sequence
from skddh.datasets._morphology_phantom import chunk_size, render_pelvis_images

#: The per-hip targets, in order; ``sex`` is 1 for female.
TARGET_NAMES = ("ischial_spine", "cam", "dysplasia", "any_abnormality", "sex")
#: The measurements a reader takes on each hip.
MEASUREMENTS = ("alpha", "lcea", "tonnis", "spine_mm", "jsw_mm", "osteophyte_mm")
#: Thresholds of the label rules (degrees, mm).
CAM_ALPHA = 55.0
DYSPLASIA_LCEA, BORDERLINE_LCEA, STEEP_TONNIS = 20.0, 25.0, 10.0
JSN_MM, OSTEOPHYTE_MM = 2.0, 2.0
#: Per-reading noise SD and per-rater bias SD of each measurement, by preset. The expert reads
#: with ``EXPERT_FACTOR`` times the reading noise and no bias.
RATER_NOISE = {
    "clinical": {
        "alpha": (7.0, 1.0),
        "lcea": (3.0, 1.0),
        "tonnis": (2.0, 0.8),
        "spine_mm": (2.3, 0.6),
        "jsw_mm": (0.25, 0.08),
        "osteophyte_mm": (0.6, 0.2),
    },
}
RATER_NOISE["hard"] = {k: (1.5 * s, 1.5 * b) for k, (s, b) in RATER_NOISE["clinical"].items()}
RATER_NOISE["none"] = {k: (0.0, 0.0) for k in RATER_NOISE["clinical"]}
EXPERT_FACTOR = 0.3

DESCR = """\
Synthetic adult AP pelvis radiographs with per-hip morphology labels
(skddh.datasets.make_hip_morphology_cohort)

SYNTHETIC DATA FOR METHOD DEVELOPMENT. NOT FOR CLINICAL USE. No real patient appears here.

The study shape of Khosravi et al. (Mayo Clinic): one AP pelvis per patient (mean age 47, 49 %
women); the train pool read by two raters, a hold-out read by one expert. Each hip has an alpha
angle, lateral centre-edge angle, Tonnis angle, ischial spine projection, joint space and
osteophyte size, drawn first; the radiograph is rendered from them. Labels: ischial spine sign
(spine medial to the brim), cam (alpha > 55 deg), dysplasia (LCEA < 20, or < 25 with Tonnis >
10), any abnormality (any of these, joint space <= 2 mm or an osteophyte >= 2 mm) and sex
(1 = female, from pelvic shape). Train labels: the rule applied to the mean of the raters'
readings; hold-out labels: the expert's reading. Boxes per hip (x0, y0, x1, y1 px) frame the
head, acetabulum and the medial wall where the ischial spine shows.
"""


def gwet_ac1_binary(a, b) -> float:
    """Gwet's AC1 of two raters' binary labels (a small local helper).

    ``AC1 = (pa - pe) / (1 - pe)`` with ``pe = 2 pi (1 - pi)`` and ``pi`` the mean prevalence
    over both raters (Gwet 2008).

    Examples
    --------
    >>> from skddh.datasets._morphology import gwet_ac1_binary
    >>> round(gwet_ac1_binary([1, 1, 0, 0], [1, 1, 0, 1]), 4)
    0.5294
    """
    a, b = np.asarray(a, float), np.asarray(b, float)
    pa = np.mean(a == b)
    pi = (a.mean() + b.mean()) / 2.0
    pe = 2.0 * pi * (1.0 - pi)
    return float((pa - pe) / (1.0 - pe))


def hip_labels(m: pd.DataFrame) -> pd.DataFrame:
    """The label rules on a frame of measurements (:data:`MEASUREMENTS`) -> 0/1 labels."""
    cam = m["alpha"] > CAM_ALPHA
    dys = (m["lcea"] < DYSPLASIA_LCEA) | (
        (m["lcea"] < BORDERLINE_LCEA) & (m["tonnis"] > STEEP_TONNIS)
    )
    spine = m["spine_mm"] > 0.0
    other = (m["jsw_mm"] <= JSN_MM) | (m["osteophyte_mm"] >= OSTEOPHYTE_MM)
    return pd.DataFrame(
        {
            "ischial_spine": spine,
            "cam": cam,
            "dysplasia": dys,
            "other_finding": other,
            "any_abnormality": cam | dys | spine | other,
        }
    ).astype(np.int8)


def _draw_patients(n: int, rng) -> pd.DataFrame:
    female = rng.random(n) < 0.49
    age = np.clip(rng.normal(47.0, 15.0, n), 18.0, 90.0)
    return pd.DataFrame(
        {
            "patient": [f"M{i:05d}" for i in range(n)],
            "age": age,
            "sex": np.where(female, "F", "M"),
        }
    )


def _draw_hips(patients: pd.DataFrame, rng) -> pd.DataFrame:
    """True per-hip morphology, two rows per patient ([R, L])."""
    n = len(patients)
    male = np.repeat(patients["sex"].to_numpy() == "M", 2)
    age = np.repeat(patients["age"].to_numpy(), 2)
    # a hip is "abnormal-prone" like its patient's other hip most of the time
    prone_p = rng.random(n) < 0.77
    prone = np.where(rng.random(2 * n) < 0.85, np.repeat(prone_p, 2), rng.random(2 * n) < 0.77)
    m = 2 * n
    z = rng.standard_normal((m, 4))
    # an abnormal-prone hip has one leading finding besides the (usual) cam:
    # 0 ischial spine sign, 1 dysplasia, 2 other (joint space / osteophyte)
    lead = np.where(prone, rng.choice(3, m, p=[0.41, 0.41, 0.18]), -1)
    alpha = np.where(prone, 64.0 + 3.0 * (2 * male - 1) + 8.0 * z[:, 0], 42.0 + 3.0 * z[:, 0])
    lcea = np.where(lead == 1, 18.0 + 4.5 * z[:, 1], 32.0 + 4.5 * z[:, 1]) - 2.0 * (~male)
    tonnis = 21.0 - 0.55 * lcea + 2.5 * rng.standard_normal(m)
    spine = np.where(lead == 0, 3.0 + 2.5 * z[:, 2], -4.5 + 1.8 * z[:, 2]) + 1.0 * male
    jsw = 4.8 - 0.3 * (~male) - 0.015 * np.clip(age - 40.0, 0, None) + 0.7 * z[:, 3]
    jsw = np.where(lead == 2, rng.uniform(0.8, 2.6, m), np.clip(jsw, 2.3, 6.5))
    p_ost = np.where(lead == 2, 0.5, 0.03 / (1.0 + np.exp(-(age - 60.0) / 8.0)))
    ost = np.where(rng.random(m) < p_ost, rng.uniform(2.5, 5.0, m), 0.0)
    return pd.DataFrame(
        {
            "side": np.tile(["R", "L"], n),
            "alpha": np.clip(alpha, 39.0, 95.0),
            "lcea": np.clip(lcea, 2.0, 48.0),
            "tonnis": np.clip(tonnis, -8.0, 28.0),
            "spine_mm": np.clip(spine, -9.0, 10.0),
            "jsw_mm": jsw,
            "osteophyte_mm": ost,
        }
    )


def _read(truth: pd.DataFrame, noise: dict, factor: float, bias: bool, rng) -> pd.DataFrame:
    out = {}
    for col in MEASUREMENTS:
        sd, b = noise[col]
        offset = rng.normal(0.0, b) if bias else 0.0
        out[col] = truth[col].to_numpy() + offset + factor * sd * rng.standard_normal(len(truth))
    out = pd.DataFrame(out)
    out["osteophyte_mm"] = np.where(truth["osteophyte_mm"] > 0, out["osteophyte_mm"], 0.0)
    out["jsw_mm"] = out["jsw_mm"].clip(lower=0.0)
    return out


@validate_params(
    {
        "n_patients": [Interval(Integral, 2, None, closed="left")],
        "image_size": [Interval(Integral, 64, 1024, closed="both")],
        "n_holdout": [Interval(Integral, 0, None, closed="left")],
        "n_raters": [Interval(Integral, 1, 10, closed="both")],
        "rater_noise": [StrOptions({"clinical", "hard", "none"})],
        "n_jobs": [Integral, None],
        "random_state": ["random_state"],
    },
    prefer_skip_nested_validation=True,
)
def make_hip_morphology_cohort(
    n_patients=500,
    *,
    image_size=256,
    n_holdout=100,
    n_raters=2,
    rater_noise="clinical",
    n_jobs=None,
    random_state=None,
) -> Bunch:
    """Make a synthetic cohort of adult AP pelvis radiographs with per-hip morphology labels.

    The default is the study shape of Khosravi et al. (Mayo Clinic): 500 patients, one AP
    pelvis each, mean age 47, 49 % women; ``n_patients - n_holdout`` radiographs (the train /
    validation pool) read by ``n_raters`` raters and a hold-out of ``n_holdout`` read by one
    expert. Synthetic, for method development; not for clinical use.

    Each hip (right and left) has an alpha angle, a lateral centre-edge angle (LCEA), a Tonnis
    angle, an ischial spine projection past the pelvic brim, a joint space width and an
    osteophyte size, drawn from a mixture of normal and abnormal hips (bilateral in most
    patients); the radiograph is rendered from them, so each label is in the pixels. Labels:
    ``ischial_spine`` (spine medial to the brim), ``cam`` (alpha > 55 deg), ``dysplasia``
    (LCEA < 20 deg, or < 25 deg with Tonnis > 10 deg), ``any_abnormality`` (any of these, or
    joint space <= 2 mm, or an osteophyte >= 2 mm) and ``sex`` (1 = female; pelvic shape:
    wider, rounder inlet, wider subpubic arch). The clinical facts and their sources are in
    the module docstring of :mod:`skddh.datasets._morphology`.

    Raters read the measurements with a per-rater bias and per-reading noise, then apply the
    rules, so they disagree near the thresholds; the "clinical" noise reproduces the study's
    Gwet's AC1 (dysplasia 0.83, all abnormalities 0.88, ischial spine 0.75, cam 0.61).
    Train targets are the rules applied to the mean of the raters' readings (an adjudicated
    reading: where the raters agree on a single-threshold label it is their label); hold-out
    targets are the expert's reading (the truth read with small noise, no bias).

    Nuisances (labels unchanged): in-plane rotation (+-5 deg), scale (field of view 370-420
    mm), shift (+-12 mm), pelvic tilt (apparent inlet and obturator height), soft-tissue
    thickness, exposure, scatter, blur, photon noise and gamma.

    Parameters
    ----------
    n_patients : int, default=500
        Number of patients (one radiograph each), at least 2.
    image_size : int in [64, 1024], default=256
        Side of the square radiographs (the whole AP pelvis) in pixels.
    n_holdout : int, default=100
        Radiographs in the expert-read hold-out; must be smaller than ``n_patients``.
    n_raters : int in [1, 10], default=2
        Raters of the train pool.
    rater_noise : {"clinical", "hard", "none"}, default="clinical"
        Reading noise: tuned to the study, 1.5 times that, or exact readings.
    n_jobs : int, default=None
        Parallel chunks (joblib). Results do not depend on it.
    random_state : int, RandomState instance or None, default=None
        Seed; the same seed gives the same cohort, whatever ``n_jobs``.

    Returns
    -------
    cohort : Bunch
        - ``images``: (n, image_size, image_size) uint8 radiographs, the patient's right hip
          on the image left.
        - ``radiographs``: DataFrame, one row per image: ``image_id``, ``patient``, ``split``
          (``"train"`` / ``"holdout"``), ``age``, ``sex`` (``"F"``/``"M"``),
          ``pixel_spacing_mm``.
        - ``hips``: DataFrame, one row per hip (2 per image, R then L): ``hip_id``,
          ``image_index`` (row of ``images``), ``image_id``, ``patient``, ``side``, ``split``,
          the box ``x0, y0, x1, y1`` (pixels, inclusive-exclusive floats), the drawn head
          circle ``head_x, head_y, head_r`` (pixels), the targets (:data:`TARGET_NAMES`),
          ``other_finding``, per-rater labels ``<label>_rater<k>`` (nullable Int8, missing on
          the hold-out) and the true measurements (``alpha``, ``lcea``, ``tonnis``,
          ``spine_mm``, ``jsw_mm``, ``osteophyte_mm``).
        - ``targets``: DataFrame per hip of the five targets (int8), rows as ``hips``.
        - ``boxes``: DataFrame per hip: ``image_index``, ``image_id``, ``side``, ``x0, y0,
          x1, y1`` (for a detector).
        - ``truth``: DataFrame per hip: the true measurements and the labels they give.
        - ``ratings``: long DataFrame (``hip_id``, ``image_id``, ``rater``, ``measurement``,
          ``value``): every reading by ``rater_1..k`` (train) and ``expert`` (hold-out).
        - ``acquisition``: DataFrame per image of the nuisance draws.
        - ``target_names``, ``DESCR``.

    References
    ----------
    .. [1] Khosravi B, Bukowiec L, Mickley JP, et al. Characterizing hip joint morphology
       using a multitask deep learning model. J Hip Preserv Surg 2025;12(1):27-32,
       doi:10.1093/jhps/hnae041.
    .. [2] Gwet KL. Computing inter-rater reliability and its variance in the presence of
       high agreement. Br J Math Stat Psychol 2008;61:29-48.

    Examples
    --------
    >>> from skddh.datasets import make_hip_morphology_cohort
    >>> cohort = make_hip_morphology_cohort(20, image_size=64, n_holdout=5, random_state=0)
    >>> cohort.images.shape, cohort.images.dtype
    ((20, 64, 64), dtype('uint8'))
    >>> list(cohort.targets.columns)
    ['ischial_spine', 'cam', 'dysplasia', 'any_abnormality', 'sex']
    >>> len(cohort.hips), sorted(set(cohort.hips["split"]))
    (40, ['holdout', 'train'])
    """
    if n_holdout >= n_patients:
        raise ValueError(
            f"n_holdout must be smaller than n_patients, got n_holdout={n_holdout} and "
            f"n_patients={n_patients}."
        )
    noise = RATER_NOISE[rater_noise]
    root = _seed_sequence(random_state)
    s_pop, s_img, s_rate = root.spawn(3)
    rng = np.random.default_rng(s_pop)
    patients = _draw_patients(n_patients, rng)
    truth = _draw_hips(patients, rng)
    split = np.array(["train"] * (n_patients - n_holdout) + ["holdout"] * n_holdout)
    patients["split"] = split[rng.permutation(n_patients)]

    seeds = s_img.spawn(-(-n_patients // chunk_size(image_size)))
    images, geo, acq = render_pelvis_images(
        truth[list(MEASUREMENTS)], patients, image_size, seeds, n_jobs
    )

    # ---- readings: raters on the train pool, the expert on the hold-out -------------------
    rate_rng = np.random.default_rng(s_rate)
    image_index = np.repeat(np.arange(n_patients), 2)
    hip_split = patients["split"].to_numpy()[image_index]
    train = hip_split == "train"
    image_ids = np.array([f"AP{i:05d}" for i in range(n_patients)])
    hip_ids = np.char.add(image_ids[image_index], np.tile(["R", "L"], n_patients))
    readings = [_read(truth, noise, 1.0, True, rate_rng) for _ in range(n_raters)]
    expert = _read(truth, noise, EXPERT_FACTOR, False, rate_rng)
    consensus = hip_labels(sum(readings) / n_raters)
    expert_labels = hip_labels(expert)
    labels = pd.DataFrame(
        np.where(train[:, None], consensus, expert_labels),
        columns=consensus.columns,
    ).astype(np.int8)
    true_labels = hip_labels(truth)
    female = (patients["sex"].to_numpy()[image_index] == "F").astype(np.int8)

    hips = pd.DataFrame(
        {
            "hip_id": hip_ids,
            "image_index": image_index,
            "image_id": image_ids[image_index],
            "patient": patients["patient"].to_numpy()[image_index],
            "side": truth["side"].to_numpy(),
            "split": hip_split,
        }
    )
    hips = pd.concat([hips, geo.reset_index(drop=True)], axis=1)
    targets = labels[list(TARGET_NAMES[:-1])].assign(sex=female)
    hips = pd.concat([hips, targets, labels[["other_finding"]]], axis=1)
    for k, reading in enumerate(readings, start=1):
        lab = hip_labels(reading)
        for name in ("ischial_spine", "cam", "dysplasia", "any_abnormality"):
            hips[f"{name}_rater{k}"] = pd.array(
                np.where(train, lab[name].to_numpy(), 0), dtype="Int8"
            )
            hips.loc[~train, f"{name}_rater{k}"] = pd.NA
    hips = pd.concat([hips, truth[list(MEASUREMENTS)]], axis=1)

    long = []
    for who, reading, mask in [
        *[(f"rater_{k}", r, train) for k, r in enumerate(readings, start=1)],
        ("expert", expert, ~train),
    ]:
        part = reading[mask].assign(hip_id=hip_ids[mask], image_id=image_ids[image_index][mask])
        part = part.melt(id_vars=["hip_id", "image_id"], var_name="measurement")
        long.append(part.assign(rater=who))
    ratings = pd.concat(long, ignore_index=True)[
        ["hip_id", "image_id", "rater", "measurement", "value"]
    ]

    radiographs = pd.DataFrame(
        {
            "image_id": image_ids,
            "patient": patients["patient"].to_numpy(),
            "split": patients["split"].to_numpy(),
            "age": patients["age"].to_numpy(),
            "sex": patients["sex"].to_numpy(),
            "pixel_spacing_mm": acq["pixel_spacing_mm"].to_numpy(),
        }
    )
    return Bunch(
        images=images,
        radiographs=radiographs,
        hips=hips,
        targets=targets.reset_index(drop=True),
        boxes=hips[["image_index", "image_id", "side", "x0", "y0", "x1", "y1"]].copy(),
        truth=pd.concat([truth[list(MEASUREMENTS)], true_labels], axis=1).assign(sex=female),
        ratings=ratings,
        acquisition=acq,
        target_names=list(TARGET_NAMES),
        DESCR=DESCR,
    )


def crop_hips(images, boxes: pd.DataFrame, size: int = 64, *, mirror_left: bool = True):
    """Crop each hip box out of its radiograph and resample it to ``size`` x ``size``.

    Left hips (the image right) are mirrored so that lateral is always on the crop's left,
    as in the infant cohort's per-hip views. Bilinear sampling; pixels outside the image are 0.

    Parameters
    ----------
    images : ndarray of shape (n, H, W)
        Radiographs.
    boxes : DataFrame
        One row per crop with ``image_index``, ``side`` and ``x0, y0, x1, y1`` (pixels).
    size : int, default=64
        Side of the square crops.
    mirror_left : bool, default=True
        Mirror the left hips.

    Returns
    -------
    ndarray of shape (len(boxes), size, size), uint8

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> from skddh.datasets._morphology import crop_hips
    >>> img = np.arange(16, dtype=np.uint8).reshape(1, 4, 4)
    >>> box = pd.DataFrame({"image_index": [0], "side": ["R"], "x0": [0.0], "y0": [0.0],
    ...                     "x1": [4.0], "y1": [4.0]})
    >>> crop_hips(img, box, size=4)[0].tolist() == img[0].tolist()
    True
    """
    images = np.asarray(images)
    b = boxes[["x0", "y0", "x1", "y1"]].to_numpy(float)
    t = (np.arange(size) + 0.5) / size
    xs = b[:, :1] + t[None, :] * (b[:, 2:3] - b[:, :1]) - 0.5
    ys = b[:, 1:2] + t[None, :] * (b[:, 3:4] - b[:, 1:2]) - 0.5
    if mirror_left:
        left = (boxes["side"].to_numpy() == "L")[:, None]
        xs = np.where(left, xs[:, ::-1], xs)
    idx = boxes["image_index"].to_numpy()
    h, w = images.shape[1:]
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    out = np.zeros((len(b), size, size), float)
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            ok = ((yy >= 0) & (yy < h))[:, :, None] & ((xx >= 0) & (xx < w))[:, None, :]
            vals = images[
                idx[:, None, None],
                np.clip(yy, 0, h - 1)[:, :, None],
                np.clip(xx, 0, w - 1)[:, None, :],
            ]
            out += np.where(ok, vals, 0) * wy[:, :, None] * wx[:, None, :]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
