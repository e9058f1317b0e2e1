"""The cross-modal proxy: the paired X-ray finding predicted from ultrasound, calibrated.

The DDH paper's future work: a hip scanned by ultrasound would, if referred, get an AP pelvis
radiograph whose finding (acetabular index > 30 deg or IHDI grade >= 2) is what the clinician
acts on. Trained on the matched ultrasound / X-ray pairs of the training subjects, the proxy
predicts that finding from the ultrasound alone, with probabilities calibrated out of fold by
subject, so that a policy can refer on the modality the clinician would otherwise order:
``RiskControlledPolicy(CrossModalProxy(), outcome="xr_abnormal")`` passes a hip when its
predicted probability of an abnormal X-ray is low enough that the missed X-ray findings are
controlled.
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted
from sklearn_compat.base import _fit_context

__all__ = ["CrossModalProxy"]


class CrossModalProxy(ClassifierMixin, MetaEstimatorMixin, BaseEstimator):
    """Predict the paired X-ray finding (1 = abnormal) from ultrasound, calibrated by subject.

    A binary classifier fitted on ultrasound images or features against the finding of the
    same hip's radiograph, then calibrated out of fold: ``cv`` folds **by subject**
    (``GroupKFold`` on ``groups``), each fitting ``estimator`` on the other folds and a
    calibrator (Platt's sigmoid or isotonic regression) on its own, through scikit-learn's
    :class:`~sklearn.calibration.CalibratedClassifierCV`; ``predict_proba`` averages the folds.
    Folds by subject matter: a subject's images are correlated, and a calibrator that saw
    images of subjects the classifier was fitted on would learn over-confident probabilities.

    Calibrated means, for the population the pairs come from, ``P(finding | proba = p)`` is
    close to ``p`` (estimated, no finite-sample guarantee). A guarantee on the misses comes
    from the policy that uses it: :class:`~skddh.RiskControlledPolicy` with ``outcome=`` set.

    Parameters
    ----------
    estimator : classifier, default=None
        ``None`` means ``make_pipeline(StandardScaler(), LogisticRegression())`` on features.
    method : {"sigmoid", "isotonic"}, default="sigmoid"
        The calibrator. Isotonic needs several hundred pairs.
    cv : int, default=5
        Folds, by subject when ``groups`` are given (else stratified by class, rows as
        units: exact only with one image per subject).

    Attributes
    ----------
    calibrated_ : CalibratedClassifierCV
        The fitted folds and their calibrators.
    classes_ : ndarray of shape (2,)
        The two labels, sorted; the second is the abnormal finding (``[0, 1]`` usually).

    Examples
    --------
    >>> import numpy as np
    >>> from skddh.models import CrossModalProxy
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(400, 3))
    >>> finding = (X[:, 0] + rng.normal(0, 1, 400) > 1.0).astype(int)
    >>> proxy = CrossModalProxy().fit(X, finding, groups=np.arange(400) // 2)
    >>> proxy.predict_proba(X[:3]).shape
    (3, 2)
    """

    _parameter_constraints: dict = {
        "estimator": [HasMethods(["fit", "predict_proba"]), None],
        "method": [StrOptions({"sigmoid", "isotonic"})],
        "cv": [Interval(Integral, 2, None, closed="left")],
    }

    def __init__(self, estimator=None, *, method="sigmoid", cv=5):
        self.estimator = estimator
        self.method = method
        self.cv = cv

    def _base(self):
        if self.estimator is None:
            return make_pipeline(StandardScaler(), LogisticRegression())
        return self.estimator

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y, groups=None, **fit_params):
        """Fit the classifier per fold and calibrate each on its held-out subjects.

        Parameters
        ----------
        X : array-like of shape (n_samples, ...)
            Ultrasound images or features, as ``estimator`` takes them.
        y : array-like of shape (n_samples,)
            The paired X-ray finding, two labels: 0 (normal) and 1 (abnormal), or any two
            whose larger is the abnormal one.
        groups : array-like of shape (n_samples,), default=None
            Subject ids: the calibration folds split by subject.
        **fit_params : dict
            Passed to ``estimator.fit`` (per-sample ones sliced to each fold).

        Returns
        -------
        self
        """
        if y is None:
            raise ValueError(
                f"{type(self).__name__} requires y to be passed, but the target y is None."
            )
        if sp.issparse(X) and not get_tags(self._base()).input_tags.sparse:
            raise TypeError(
                f"{type(self).__name__}: sparse input is not supported by "
                f"{type(self._base()).__name__}; pass a dense array or a sparse-capable estimator."
            )
        y = np.asarray(y)
        kind = type_of_target(y, input_name="y", raise_unknown=True)
        if kind != "binary":
            raise ValueError(
                "Only binary classification is supported: y is the X-ray finding (two labels, "
                f"the larger = abnormal). The type of the target is {kind}."
            )
        if groups is None:
            splitter = StratifiedKFold(self.cv)
            splits = list(splitter.split(np.zeros(len(y)), y))
        else:
            groups = np.asarray(groups)
            if len(groups) != len(y):
                raise ValueError(f"groups has {len(groups)} entries but y has {len(y)}.")
            n_subjects = len(np.unique(groups))
            if n_subjects < self.cv:
                raise ValueError(
                    f"cv={self.cv} folds by subject need at least {self.cv} subjects; groups "
                    f"has {n_subjects}."
                )
            splits = list(GroupKFold(self.cv).split(np.zeros(len(y)), y, groups))
        self.calibrated_ = CalibratedClassifierCV(
            clone(self._base()), method=self.method, cv=splits
        ).fit(X, y, **fit_params)
        self.classes_ = self.calibrated_.classes_
        return self

    def predict_proba(self, X) -> np.ndarray:
        """Calibrated probabilities, columns ``[normal, abnormal]``."""
        check_is_fitted(self)
        return self.calibrated_.predict_proba(X)

    def predict(self, X) -> np.ndarray:
        """1 where the calibrated probability of an abnormal X-ray is at least 0.5."""
        check_is_fitted(self)
        return self.calibrated_.predict(X)

    @property
    def n_features_in_(self):
        """Number of features seen by the classifier (delegated)."""
        check_is_fitted(self)
        return self.calibrated_.n_features_in_

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = get_tags(self._base()).input_tags.sparse
        tags.classifier_tags.multi_class = False  # one finding: normal or abnormal
        return tags
