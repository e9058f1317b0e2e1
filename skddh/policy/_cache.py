"""The policy's fit and prediction cache: content keys, and cached fits without the encoder.

A search over ``rule`` and ``delta`` fits the same regressor on the same fold once per
candidate. ``SelectiveImagingPolicy(memory=...)`` caches that fit, keyed on the content of
the estimator (as given, before the clone that is fitted) and of the data
(:func:`content_key`). Each claim below is tested in ``tests/test_cache.py``.

- A key is a sha1 digest of content, the same in every process for the same estimator and
  data, so the disk cache serves joblib workers and later sessions (the same encoder,
  pickled and loaded, gives the same key). A torch module is keyed by its class, its
  architecture (``repr``), its train/eval flags and the names, dtypes, shapes and bytes of
  its parameters and buffers, not by its pickle: two equal modules pickle to different
  bytes. A frozen estimator's other fitted state counts too, so an encoder fitted afresh
  with the same seed is a different key (its ``history_`` holds timings).
- A module's digest is memoised per module object, with a guard: the identity, version
  counter and storage of each of its tensors, its submodules and their train/eval flags. A
  refit, ``load_state_dict``, an optimiser step, a replaced tensor, storage or submodule,
  or an in-place edit of a weight changes the guard and the module is digested again, so a
  stale digest is not used; an unchanged encoder is digested once, and each later key
  costs one walk over its tensors. The one edit it cannot see is the one torch does not
  count either: an in-place operation on ``weight.data`` (``.data`` bypasses the version
  counter; edit under ``torch.no_grad()`` instead). Nothing else is memoised: numpy cannot
  tell an in-place edit.
- Numeric arrays are hashed from their buffer (dtype and shape included, memory layout
  not), DataFrames by labels, dtypes and columns, estimators by class and attributes. A
  sequence of file paths is keyed by the paths, not by the files' content.
- A cached fit is pickled without the frozen estimators of the estimator it was cloned
  from (:func:`dumps_fit`): each is written as a reference and resolved on loading to the
  caller's own object (:func:`loads_fit`), whose content the key already fixes. A cached
  head over a ResNet-18 encoder is then under a tenth of the encoder's 45 MB (under 1 MB:
  the default head's weights).
- Two small in-process LRUs: :data:`FITS` (fitted regressors by key, so a hit within one
  process neither reads the disk nor unpickles) and :data:`PREDICTIONS` (the components of
  one fit on one data set, so candidates that differ only in ``rule`` or ``delta`` run the
  regressor once per test fold).
"""

from __future__ import annotations

import hashlib
import io
import operator
import os
import pickle
import sys
import weakref
from collections import OrderedDict

import numpy as np
import pandas as pd
from joblib.hashing import NumpyHasher
from sklearn.base import BaseEstimator
from sklearn.frozen import FrozenEstimator

#: hashlib algorithm of every key: sha1 reads memory about 2.5x faster than md5 on the
#: project's VM (CPUs with SHA extensions), and a key only needs to tell content apart.
HASH_NAME = "sha1"

#: module -> (guard, digest); weak, so that a dropped encoder leaves no trace.
_MODULE_DIGESTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _torch():
    """torch if it is imported (no object can be a torch module otherwise), else None."""
    return sys.modules.get("torch")


def _tensor_bytes(tensor) -> memoryview:
    """The raw bytes of a dense tensor (any dtype, bfloat16 included), on the CPU."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(_torch().uint8).numpy().data


def _data_ptr(tensor):
    try:
        return tensor.data_ptr()
    except RuntimeError:  # no storage (sparse): its digest is unique anyway (_tensor_digest)
        return None


def _module_guard(module) -> tuple:
    """What changes when a module is refitted or edited: tensors, their versions and storage,
    submodules, train/eval flags.

    The submodules and tensors themselves are held (compared by identity), so a freed
    tensor whose address a new one reuses cannot pass for it; the module itself is not (the
    memo is keyed weakly on it).
    """
    objects, values, stack = [], [], [module]
    while stack:
        mod = stack.pop()
        if mod is not module:
            objects.append(mod)
        values.append(mod.training)
        for tensors in (mod._parameters, mod._buffers):
            for name, t in tensors.items():
                objects.append(t)
                values.append(name)
                if t is not None:  # ``p.data = other`` keeps p and its version: not its storage
                    values.append(t._version)
                    values.append(_data_ptr(t))
        stack.extend(mod._modules.values())
    return objects, values


def _same_guard(a: tuple, b: tuple) -> bool:
    # Tensors and submodules by identity (a tensor's == is elementwise), the rest by value.
    return len(a[0]) == len(b[0]) and all(map(operator.is_, a[0], b[0])) and a[1] == b[1]


def _tensor_digest(h, tensor) -> None:
    """Feed a tensor's dtype, shape and bytes to the hash ``h``."""
    h.update(f"{tensor.dtype}:{tuple(tensor.shape)}:".encode())
    try:
        h.update(_tensor_bytes(tensor))
    except (RuntimeError, TypeError, ValueError):
        # No readable bytes (a meta, sparse or quantized tensor): a digest unique to this
        # call, so such a fit is never shared by mistake (nor, then, across processes).
        h.update(os.urandom(16))


def _module_digest(module) -> str:
    """The module's content digest, recomputed only when its guard has changed."""
    guard = _module_guard(module)
    memo = _MODULE_DIGESTS.get(module)
    if memo is not None and _same_guard(memo[0], guard):
        return memo[1]
    h = hashlib.new(HASH_NAME)
    cls = type(module)
    h.update(f"{cls.__module__}.{cls.__qualname__}\n{module!r}\n".encode())
    h.update(repr([m.training for m in module.modules()]).encode())
    named = [
        *module.named_parameters(remove_duplicate=False),
        *module.named_buffers(remove_duplicate=False),
    ]
    for name, t in named:
        h.update(f"\n{name}:".encode())
        _tensor_digest(h, t)
    digest = h.hexdigest()
    _MODULE_DIGESTS[module] = (guard, digest)
    return digest


class _KeyHasher(NumpyHasher):
    """joblib's hasher, with torch modules and tensors replaced by digests of their content."""

    def __init__(self):
        super().__init__(hash_name=HASH_NAME)

    def save(self, obj):
        torch = _torch()
        if torch is not None:
            if isinstance(obj, torch.nn.Module):
                obj = ("torch.nn.Module", _module_digest(obj))
            elif isinstance(obj, torch.Tensor):
                h = hashlib.new(HASH_NAME)
                _tensor_digest(h, obj)
                obj = ("torch.Tensor", h.hexdigest())
        NumpyHasher.save(self, obj)


_ATOMS = (type(None), bool, int, float, complex)


class _Cycle(Exception):
    """An object contains itself: left to joblib's hasher, which handles cycles."""


class _Digest:
    """A sha1 over a self-delimiting encoding of an object tree, without pickling it.

    joblib's hasher pickles in pure Python, several microseconds per object and about a
    millisecond for a small DataFrame; an estimator with a frozen encoder is a few hundred
    objects, keyed once per candidate and fold of a search. This walks the common types
    directly: atoms and strings by value; tuples, lists and dicts item by item (dicts with
    str keys in sorted order); numeric arrays and numpy scalars by their bytes, object
    arrays item by item; DataFrames by labels, dtypes and columns; estimators by their class
    and attributes; torch modules and tensors by their digests. Anything else (sets,
    functions, subclasses of the containers, a container that holds itself) goes to
    joblib's hasher whole. Each item is tagged with its kind and, where its length is not
    implied, prefixed by it, so distinct trees give distinct encodings.
    """

    def __init__(self):
        self.h = hashlib.new(HASH_NAME)
        self.torch = _torch()
        self._path: set = set()

    def hexdigest(self) -> str:
        return self.h.hexdigest()

    def _text(self, tag: bytes, text: str):
        data = text.encode("utf-8", "surrogatepass")
        self.h.update(b"%s%d:" % (tag, len(data)))
        self.h.update(data)

    def _array(self, arr):
        # Length-prefixed header; the bytes that follow have the length it implies.
        self._text(b"A", f"{arr.dtype!r}|{arr.shape}")
        self.h.update(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)

    def _joblib(self, obj):
        self.h.update(b"J" + _KeyHasher().hash(obj).encode())  # 40 hex digits

    def feed(self, obj):
        t = type(obj)
        if t is str:
            self._text(b"S", obj)
        elif t in _ATOMS:
            self._text(b"V", f"{t.__name__}:{obj!r}")  # repr of these round-trips exactly
        elif t is np.ndarray:
            if obj.dtype.hasobject:  # e.g. labels: their Python objects, in order
                self._text(b"O", f"{obj.dtype!r}|{obj.shape}")
                self.feed(obj.reshape(-1).tolist())
            else:
                self._array(obj)
        elif t is tuple or t is list or t is dict:
            if id(obj) in self._path:
                raise _Cycle
            self._path.add(id(obj))
            if t is dict:
                items = list(obj.items())
                if all(type(k) is str for k, _ in items):
                    items.sort(key=lambda kv: kv[0])
                self.h.update(b"D%d:" % len(items))
                for k, v in items:
                    self.feed(k)
                    self.feed(v)
            else:
                self.h.update(b"%s%d:" % (b"T" if t is tuple else b"L", len(obj)))
                for item in obj:
                    self.feed(item)
            self._path.discard(id(obj))
        elif isinstance(obj, np.generic) and not isinstance(obj, np.object_):
            self._text(b"G", repr(obj.dtype))
            self.h.update(obj.tobytes())
        elif self.torch is not None and isinstance(obj, self.torch.nn.Module):
            self.h.update(b"M" + _module_digest(obj).encode())
        elif self.torch is not None and isinstance(obj, self.torch.Tensor):
            self.h.update(b"P")
            _tensor_digest(self.h, obj)
        elif t is pd.DataFrame:
            self._frame(obj)
        elif isinstance(obj, BaseEstimator):
            if id(obj) in self._path:
                raise _Cycle
            self._path.add(id(obj))
            self._text(b"E", f"{t.__module__}.{t.__qualname__}")
            # Its attributes, not __getstate__(), which may do work (copy a model to the CPU);
            # less the version that unpickling leaves on estimators outside sklearn.
            state = vars(obj)
            if "_sklearn_version" in state:
                state = {k: v for k, v in state.items() if k != "_sklearn_version"}
            self.feed(state)
            self._path.discard(id(obj))
        else:
            self._joblib(obj)

    def _frame(self, df):
        """Labels, dtypes and values column by column (a DataFrame pickles slowly)."""
        self.h.update(b"F")
        for labels in (df.columns, df.index):
            self._text(b"I", f"{type(labels).__name__}:{labels.dtype!r}:{list(labels.names)!r}")
            self.feed(labels.to_numpy())
        self.feed(df.attrs)
        for _, col in df.items():  # the fastest public route to the columns
            self._text(b"C", repr(col.dtype))
            self.feed(col.to_numpy())


def content_key(*parts) -> str:
    """sha1 of the parts' content, the same in every process for the same content.

    See :class:`_Digest` for the encoding, and the module docstring for torch modules.
    """
    # No memo by array identity: GridSearchCV slices a fresh copy of each fold for every
    # candidate (an identity memo would never hit there), and numpy has no version counter
    # that would reveal an in-place edit of a memoised array.
    digest = _Digest()
    try:
        digest.feed(parts)
    except _Cycle:
        digest = _Digest()
        digest._joblib(parts)
    return digest.hexdigest()


# ---- cached fits without the frozen estimators ------------------------------------------------
def _frozen_parts(estimator) -> dict:
    """Name -> object for the frozen estimators (and what each wraps) inside ``estimator``.

    Names are parameter paths (``estimator__steps`` order is fixed by ``get_params``), the
    same for every estimator of the same structure, which the cache key fixes.
    """
    named = [("", estimator)]
    if hasattr(estimator, "get_params"):
        named += sorted(estimator.get_params(deep=True).items(), key=lambda kv: kv[0])
    parts, seen = {}, set()
    for name, value in named:
        if isinstance(value, FrozenEstimator) and id(value) not in seen:
            seen.add(id(value))
            parts[f"{name}#frozen"] = value
            parts[f"{name}#frozen.estimator"] = value.estimator
    return parts


class _RefPickler(pickle.Pickler):
    def __init__(self, file, refs: dict):
        super().__init__(file, protocol=5)
        self._refs = refs  # id(obj) -> name; the objects are alive (held by the estimator)

    def persistent_id(self, obj):
        return self._refs.get(id(obj))


class _RefUnpickler(pickle.Unpickler):
    def __init__(self, file, parts: dict):
        super().__init__(file)
        self._parts = parts

    def persistent_load(self, pid):
        try:
            return self._parts[pid]
        except KeyError:
            raise pickle.UnpicklingError(
                f"the cached fit refers to a frozen estimator {pid!r} the estimator lacks"
            ) from None


def dumps_fit(fitted, unfitted) -> bytes:
    """Pickle ``fitted`` with every frozen estimator of ``unfitted`` written as a reference."""
    refs = {id(obj): name for name, obj in _frozen_parts(unfitted).items()}
    buf = io.BytesIO()
    _RefPickler(buf, refs).dump(fitted)
    return buf.getvalue()


def loads_fit(data: bytes, unfitted):
    """Unpickle :func:`dumps_fit` bytes, references resolved to ``unfitted``'s own objects."""
    return _RefUnpickler(io.BytesIO(data), _frozen_parts(unfitted)).load()


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
