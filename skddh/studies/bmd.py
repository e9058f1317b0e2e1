"""The BMD study (seed 002, Zheng et al., MICCAI 2021): the engine of ``skddh reproduce bmd``.

Stages, per seed: make the synthetic BMD cohort (:func:`~skddh.make_bmd_cohort`); then, at
every labelled fraction, fit four regressors of DEXA BMD and score them on the test patients:

- ``supervised``: the regressor on the labelled training images only;
- ``triplet``: the same with the adaptive triplet loss (``triplet_weight``);
- ``self_training``: :class:`~skddh.SelfTrainingRegressor` around the plain regressor, the
  unlabelled training images pseudo-labelled and the pseudo-labels refined over rounds;
- ``both``: self-training around the triplet regressor (the paper's method);
- ``all_labels`` (a reference): the plain regressor on every training patient's DEXA, the
  ceiling that pseudo-labels could at best reach.

The regressor (``model`` in the scale): ``"finetune"``, a CNN trained end to end on the
images (:class:`~skddh.FineTuningRegressor`, the paper's way; the ``paper`` scale, for a GPU),
or ``"pooled"``, the MLP head (:class:`~skddh.MeasurementRegressor`) on the images
average-pooled to ``pool_size`` pixels a side (the ``small`` scale). Why not a CNN at the
small scale: on 2 CPU cores one fine-tuning of a ResNet-10t at 32 px on 224 images took
90-110 s, and the self-training runs need about 20 per fraction and seed. Why not frozen
SimSiam features, the DDH recipe: on this cohort they carry no BMD signal (ridge and MLP on
them: Pearson r = -0.01 and 0.00 at 32 px, with or without SimSiam's intensity jitter),
while the same 224 labelled images give r = 0.74 fine-tuned and 0.72 by ridge on 16 x 16
pooled pixels. BMD is read from intensity and thickness; SimSiam learns what survives its
crops and jitter.

The report compares each with the paper's Pearson r = 0.8805 (their real radiographs; ours
are synthetic, so the numbers compare in kind, not in level).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from skddh.datasets import make_bmd_cohort
from skddh.datasets._bmd import OSTEOPOROSIS_T_SCORE, t_score
from skddh.metrics import regression_agreement
from skddh.models import FineTuningRegressor, MeasurementRegressor, SelfTrainingRegressor

__all__ = [
    "BMD_METHODS",
    "BMD_MODELS",
    "BMD_SCALES",
    "PAPER_PEARSON_R",
    "BMDStudyResult",
    "pooled_pixels",
    "run_bmd_study",
    "screening",
]

#: Pearson r between predicted and DEXA BMD reported by Zheng et al. (1,090 images, 819
#: patients), for the report.
PAPER_PEARSON_R = 0.8805

#: The four methods and the reference, in the report's order. ``all_labels`` is the plain
#: regressor on every training patient's DEXA: what self-training could at best buy back.
BMD_METHODS = ("supervised", "triplet", "self_training", "both", "all_labels")

#: Sizes per scale: ``small`` runs on 2 CPU cores in minutes; ``paper`` is the seed's cohort
#: at 224 px, for a GPU.
BMD_SCALES = {
    "small": dict(
        model="pooled",
        n_patients=819,
        image_size=32,
        pool_size=16,
        epochs=100,
        batch_size=64,
        hidden=128,
        triplet_weight=2.0,
        triplet_margin=0.5,
        n_folds=3,
        n_repeats=2,
        max_iter=3,
        trust_fraction=0.5,
        fractions=(0.10, 0.25, 0.50),
    ),
    "paper": dict(
        model="finetune",
        backbone="resnet18",
        n_patients=819,
        image_size=224,
        pool_size=16,
        epochs=40,
        batch_size=64,
        hidden=128,
        triplet_weight=0.5,
        triplet_margin=0.5,
        n_folds=5,
        n_repeats=3,
        max_iter=5,
        trust_fraction=0.5,
        fractions=(0.10, 0.25, 0.50),
    ),
}


@dataclass
class BMDStudyResult:
    """Everything the BMD report shows.

    Attributes
    ----------
    runs : DataFrame
        One row per (seed, fraction, method): sizes, :func:`~skddh.regression_agreement` of
        predicted against DEXA BMD on the test images, the screening read-out (``auroc``,
        ``sensitivity``, ``specificity`` at T <= -2.5) and ``seconds``.
    summary : DataFrame
        Mean and std over seeds of ``pearson_r``, ``mae``, ``auroc``, ``sensitivity`` per
        (fraction, method).
    comparison : DataFrame
        Per fraction and method, the paired difference in Pearson r from ``supervised``
        over seeds (mean, std) and the larger of the two methods' spreads over seeds.
    predictions : DataFrame
        Test predictions of every method at every fraction, seed by seed (for the
        Bland-Altman plots).
    config : dict
    seeds : tuple of int
    timings : dict
        Seconds per stage.
    """

    runs: pd.DataFrame
    summary: pd.DataFrame
    comparison: pd.DataFrame
    predictions: pd.DataFrame
    config: dict
    seeds: tuple
    timings: dict = field(default_factory=dict)

    @classmethod
    def concat(cls, results) -> BMDStudyResult:
        """One result from runs of the same scale over other seeds or fractions.

        Parameters
        ----------
        results : sequence of BMDStudyResult

        Returns
        -------
        BMDStudyResult
            Runs and predictions stacked, summary and comparison recomputed.
        """
        results = list(results)
        if not results:
            raise ValueError("results must hold at least one BMDStudyResult.")
        runs = pd.concat([r.runs for r in results], ignore_index=True)
        keys = ["seed", "fraction", "method"]
        if runs.duplicated(keys).any():
            raise ValueError("results repeat a (seed, fraction, method) run.")
        seeds = tuple(dict.fromkeys(s for r in results for s in r.seeds))
        timings = {}
        for r in results:
            for k, v in r.timings.items():
                timings[k] = timings.get(k, 0.0) + v
        return cls(
            runs=runs,
            summary=_summary(runs),
            comparison=_comparison(runs),
            predictions=pd.concat([r.predictions for r in results], ignore_index=True),
            config=results[0].config,
            seeds=seeds,
            timings=timings,
        )


#: The regressors a scale may name.
BMD_MODELS = ("pooled", "finetune")


def _regressor(cfg, device, seed, triplet):
    tw = cfg["triplet_weight"] if triplet else 0.0
    if cfg["model"] == "finetune":
        # BMD is read from intensity: the intensity augmentation would erase it
        return FineTuningRegressor(
            backbone=cfg.get("backbone", "resnet18"),
            image_size=cfg["image_size"],
            hidden=cfg["hidden"],
            epochs=cfg["epochs"],
            batch_size=cfg["batch_size"],
            lr=cfg.get("lr", 1e-3),
            encoder_lr=cfg.get("encoder_lr", 1e-3),
            brightness=0.0,
            contrast=0.0,
            gamma=0.0,
            triplet_weight=tw,
            triplet_margin=cfg["triplet_margin"],
            device=device,
            random_state=seed,
        )
    return MeasurementRegressor(
        hidden=cfg["hidden"],
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        triplet_weight=tw,
        triplet_margin=cfg["triplet_margin"],
        device=device,
        random_state=seed,
    )


def _model(method, cfg, device, seed):
    base = _regressor(cfg, device, seed, triplet=method in ("triplet", "both"))
    if method in ("supervised", "triplet", "all_labels"):
        return base
    return SelfTrainingRegressor(
        base,
        n_folds=cfg["n_folds"],
        n_repeats=cfg["n_repeats"],
        max_iter=cfg["max_iter"],
        trust_fraction=cfg["trust_fraction"],
        random_state=seed,
    )


def pooled_pixels(images, size: int = 16) -> np.ndarray:
    """Images (n, H, W) -> their average over ``size`` x ``size`` cells, in [0, 1], flattened.

    Parameters
    ----------
    images : ndarray of shape (n, H, W), uint8
    size : int, default=16

    Returns
    -------
    ndarray of shape (n, size * size), float32

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.studies.bmd import pooled_pixels
    >>> pooled_pixels(np.full((2, 32, 32), 255, np.uint8), 4).shape
    (2, 16)
    """
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.asarray(images, np.float32)[:, None] / 255.0)
    return F.adaptive_avg_pool2d(x, size).reshape(len(x), -1).numpy()


def screening(dexa, predicted) -> dict:
    """Osteoporosis screening read-out: AUROC and sensitivity/specificity at T <= -2.5.

    The reference is the DEXA T-score (the clinical standard); the score is the predicted
    BMD (lower BMD, more likely osteoporotic).

    Parameters
    ----------
    dexa, predicted : array-like of shape (n,)
        DEXA and predicted femoral-neck BMD, g/cm^2.

    Returns
    -------
    dict
        ``prevalence``, ``auroc`` (NaN when one class is absent), ``sensitivity``,
        ``specificity``.

    Examples
    --------
    >>> from skddh.studies.bmd import screening
    >>> screening([0.5, 0.55, 0.8, 0.9], [0.52, 0.7, 0.75, 0.95])["auroc"]
    1.0
    """
    dexa, predicted = np.asarray(dexa, float), np.asarray(predicted, float)
    truth = t_score(dexa) <= OSTEOPOROSIS_T_SCORE
    flagged = t_score(predicted) <= OSTEOPOROSIS_T_SCORE
    both = truth.any() and (~truth).any()
    return {
        "prevalence": float(truth.mean()),
        "auroc": float(roc_auc_score(truth, -predicted)) if both else float("nan"),
        "sensitivity": float(flagged[truth].mean()) if truth.any() else float("nan"),
        "specificity": float((~flagged[~truth]).mean()) if (~truth).any() else float("nan"),
    }


def _summary(runs: pd.DataFrame) -> pd.DataFrame:
    cols = ["pearson_r", "mae", "ccc", "auroc", "sensitivity", "specificity"]
    g = runs.groupby(["fraction", "method"], sort=False)[cols]
    out = g.mean().add_suffix("_mean").join(g.std(ddof=1).add_suffix("_std"))
    out["n_seeds"] = g.size()
    return out.reset_index()


def _comparison(runs: pd.DataFrame) -> pd.DataFrame:
    wide = runs.pivot_table(index=["fraction", "seed"], columns="method", values="pearson_r")
    rows = []
    for fraction, block in wide.groupby(level="fraction"):
        base = block["supervised"]
        for method in block.columns:
            if method == "supervised":
                continue
            diff = block[method] - base
            spread = max(float(block[method].std(ddof=1)), float(base.std(ddof=1)))
            rows.append(
                {
                    "fraction": fraction,
                    "method": method,
                    "r_gain_mean": float(diff.mean()),
                    "r_gain_std": float(diff.std(ddof=1)),
                    "r_gain_min": float(diff.min()),
                    "spread_over_seeds": spread,
                    "beats_by_more_than_spread": bool(diff.mean() > spread),
                    "n_seeds": int(diff.count()),
                }
            )
    return pd.DataFrame(rows)


def run_bmd_study(
    scale: str | dict = "small",
    *,
    seeds=(0, 1, 2),
    fractions=None,
    methods=BMD_METHODS,
    device: str = "auto",
    verbose: int = 0,
) -> BMDStudyResult:
    """Run the semi-supervised BMD study on the synthetic cohort.

    Parameters
    ----------
    scale : {"small", "paper"} or dict
        Sizes (:data:`BMD_SCALES`), or a dict with the same keys.
    seeds : sequence of int, default=(0, 1, 2)
        One cohort, encoder and set of fits per seed.
    fractions : sequence of float in (0, 1], default=None
        Labelled fractions of the training patients; the scale's (10, 25, 50 %) by default.
    methods : sequence of str, default=BMD_METHODS
    device : str, default="auto"
    verbose : int, default=0

    Returns
    -------
    BMDStudyResult

    Examples
    --------
    A tiny scale, to show the shape (``skddh reproduce bmd`` runs ``"small"``):

    >>> from skddh.studies.bmd import BMD_SCALES, run_bmd_study
    >>> tiny = dict(BMD_SCALES["small"], n_patients=40, epochs=5, max_iter=1,
    ...             fractions=(0.5,))
    >>> result = run_bmd_study(tiny, seeds=(0,), device="cpu")
    >>> result.runs["method"].tolist()
    ['supervised', 'triplet', 'self_training', 'both', 'all_labels']
    """
    cfg = dict(BMD_SCALES[scale]) if isinstance(scale, str) else dict(scale)
    if cfg.get("model") not in BMD_MODELS:
        raise ValueError(
            f"the scale's model must be one of {BMD_MODELS}, got {cfg.get('model')!r}."
        )
    fractions = tuple(cfg["fractions"] if fractions is None else fractions)
    unknown = sorted(set(methods) - set(BMD_METHODS))
    if unknown:
        raise ValueError(f"methods has unknown method(s) {unknown}; choose from {BMD_METHODS}.")
    for f in fractions:
        if not 0 < float(f) <= 1:
            raise ValueError(f"fractions must lie in (0, 1], got {f}.")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds must name at least one seed.")
    runs, preds, timings = [], [], {"cohort": 0.0, "fits": 0.0}
    for seed in seeds:
        t0 = time.perf_counter()
        base = make_bmd_cohort(
            cfg["n_patients"],
            image_size=cfg["image_size"],
            labelled_fraction=1.0,
            random_state=seed,
        )
        train = base.split == "train"
        test = ~train
        inputs = (
            base.images
            if cfg["model"] == "finetune"
            else pooled_pixels(base.images, cfg["pool_size"])
        )
        timings["cohort"] += time.perf_counter() - t0
        dexa_test = base.targets["bmd"].to_numpy()[test]
        dexa_train = base.targets["bmd"].to_numpy()[train]  # hidden where unlabelled
        reference = None  # all_labels does not depend on the fraction: fitted once per seed
        for fraction in fractions:
            # same seed: the same images, split and reads; a nested labelled subset
            cohort = make_bmd_cohort(
                cfg["n_patients"],
                image_size=cfg["image_size"],
                labelled_fraction=float(fraction),
                random_state=seed,
            )
            if not np.array_equal(cohort.subject, base.subject):  # pragma: no cover
                raise RuntimeError("make_bmd_cohort changed its images with labelled_fraction")
            y = cohort.targets["bmd"].to_numpy()
            y_train = y[train]
            labelled = ~np.isnan(y_train)
            supervised_unlabelled = None
            for method in methods:
                t1 = time.perf_counter()
                model = _model(method, cfg, device, seed)
                if method == "all_labels":
                    if reference is None:
                        model.fit(inputs[train], dexa_train)
                        pred = np.asarray(model.predict(inputs[test]), float)
                        reference = (pred, time.perf_counter() - t1)
                    pred, secs = reference
                else:
                    if method in ("supervised", "triplet"):
                        model.fit(inputs[train][labelled], y_train[labelled])
                    else:
                        model.fit(inputs[train], y_train, groups=base.subject[train])
                    pred = np.asarray(model.predict(inputs[test]), float)
                    secs = time.perf_counter() - t1
                timings["fits"] += time.perf_counter() - t1  # a cached reference: ~0
                row = {
                    "seed": seed,
                    "fraction": float(fraction),
                    "method": method,
                    "n_labelled_images": int(
                        len(labelled) if method == "all_labels" else labelled.sum()
                    ),
                    "n_unlabelled_images": int(0 if method == "all_labels" else (~labelled).sum()),
                    "n_test_images": int(test.sum()),
                }
                row.update(regression_agreement(dexa_test, pred))
                row.update(screening(dexa_test, pred))
                row["seconds"] = secs
                hidden = dexa_train[~labelled]
                if method == "supervised" and len(hidden):
                    unl = np.asarray(model.predict(inputs[train][~labelled]), float)
                    supervised_unlabelled = float(np.abs(unl - hidden).mean())
                if isinstance(model, SelfTrainingRegressor) and len(hidden):
                    pseudo = model.pseudo_targets_[~labelled, 0]
                    trusted = model.trusted_[~labelled]
                    err = np.abs(pseudo - hidden)
                    row["n_iter"] = model.n_iter_
                    row["trusted_share"] = float(trusted.mean())
                    row["pseudo_mae_trusted"] = (
                        float(err[trusted].mean()) if trusted.any() else np.nan
                    )
                    row["pseudo_mae_untrusted"] = (
                        float(err[~trusted].mean()) if (~trusted).any() else np.nan
                    )
                    row["supervised_mae_unlabelled"] = supervised_unlabelled
                    # does the trust criterion know which pseudo-labels are wrong?
                    row["disagreement_error_spearman"] = float(
                        spearmanr(model.disagreement_[~labelled], err).statistic
                    )
                runs.append(row)
                preds.append(
                    pd.DataFrame(
                        {
                            "seed": seed,
                            "fraction": float(fraction),
                            "method": method,
                            "image_id": base.image_id[test],
                            "subject": base.subject[test],
                            "dexa": dexa_test,
                            "predicted": pred,
                        }
                    )
                )
                if verbose:
                    print(
                        f"[bmd] seed {seed} fraction {fraction:.2f} {method}: "
                        f"r={row['pearson_r']:.3f} MAE={row['mae']:.4f} ({secs:.1f} s)",
                        flush=True,
                    )
    runs = pd.DataFrame(runs)
    return BMDStudyResult(
        runs=runs,
        summary=_summary(runs),
        comparison=_comparison(runs) if "supervised" in methods else pd.DataFrame(),
        predictions=pd.concat(preds, ignore_index=True),
        config=cfg,
        seeds=seeds,
        timings=timings,
    )
