"""The policy's fit and prediction cache: content keys that stay cheap on frozen encoders.

A search over ``rule`` and ``delta`` fits the same regressor on the same fold once per
candidate. ``SelectiveImagingPolicy(memory=...)`` caches that fit, keyed on the content of
the estimator and the data. Three costs would make the cache slower than it should be, so
this module handles them itself:

- Hashing a pipeline that holds a frozen encoder pickles all of the encoder's weights (tens
  of MB) for every key. A frozen estimator does not change, so its digest is computed once
  per object and reused.
- Loading a cached fit from disk unpickles it, encoder included. A small in-process LRU of
  the fitted objects answers repeated hits in the same process; the disk cache serves the
  others (joblib workers, later sessions).
- Predicting re-runs the encoder on the same test fold for every candidate. Raw
  predictions are kept in a small in-process LRU keyed on the fit and the data.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import joblib
from joblib.hashing import NumpyHasher
from sklearn.frozen import FrozenEstimator

_FROZEN_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class _KeyHasher(NumpyHasher):
    """joblib's hasher, with a frozen estimator replaced by its (memoised) digest."""

    def save(self, obj):
        if isinstance(obj, FrozenEstimator):
            digest = _FROZEN_DIGESTS.get(obj)
            if digest is None:
                digest = joblib.hash(obj.estimator)
                _FROZEN_DIGESTS[obj] = digest
            obj = ("FrozenEstimator", digest)
        NumpyHasher.save(self, obj)


def content_key(*parts) -> str:
    """md5 of the parts' content; a frozen estimator is hashed once per object."""
    return _KeyHasher(hash_name="md5").hash(parts)


class LRU:
    """A small least-recently-used map (bounded, so a long search cannot grow it)."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key):
        if key not in self._items:
            return None
        self._items.move_to_end(key)
        return self._items[key]

    def put(self, key, value):
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def clear(self):
        self._items.clear()


#: Fitted regressors by content key (shared by the policies of one search, read-only).
FITS = LRU(8)
#: Raw predictions by (fit key, data key).
PREDICTIONS = LRU(64)
