"""Model files that hold data, never code: :func:`save_policy` and :func:`load_policy`.

A joblib or pickle file is a program: loading it runs whatever its author put in it (a
136-byte file can call ``os.system``), so such a file must come from someone you trust, and
nothing checks that the weights in it are the ones that were saved. A model file written by
:func:`save_policy` holds only numbers, strings and the names of a fixed set of skddh and
scikit-learn classes. :func:`load_policy` never unpickles, never imports a name it reads
from the file, and refuses anything it does not recognise, so opening a model file from
anyone runs no code from it; a checksum tells a corrupted file from a good one.

The file is one zip archive with exactly two members:

- ``metadata.json``: the format and its version, the skddh / scikit-learn / torch versions
  that wrote it, the creation time, the caller's ``extra`` (the CLI keeps the image size,
  rule and deltas there), SHA-256 checksums, and ``model``: every estimator as its class
  name, its constructor parameters and its fitted attributes, in plain JSON. Values that
  JSON cannot say exactly are tagged objects (``{"$tuple": [...]}``, ``{"$float": "inf"}``,
  ``{"$estimator": 2}`` for a reference to another estimator, ``{"$array": "array3"}`` for a
  numeric array, ``{"$module": "3.encoder_/"}`` for a torch module's weights, ...).
- ``arrays.safetensors``: every numeric array and every torch weight, as CPU tensors in the
  `safetensors <https://huggingface.co/docs/safetensors>`_ format (a JSON header of names,
  dtypes and shapes, then raw bytes: nothing in it can run).

Why a zip and not a directory: the CLI passes one path around (``--model``), a single file
copies and uploads as one thing, and the members can be listed and checked before any is
read; :mod:`zipfile` is in the standard library, and numpy's ``.npz`` is a zip too.

Loading checks, each failure a :class:`ValueError` that names the member and the key: the
file is a zip holding exactly those two members; ``metadata.json`` is strict JSON (no
duplicate keys, no ``NaN`` literals) of a known format version; every class is one of
``SelectiveImagingPolicy``, ``OneSidedConformalRegressor``, ``FrozenEstimator``,
``Pipeline``, ``SimSiamFeaturizer``, ``MeasurementRegressor``, ``FineTuningRegressor``;
every parameter is one the
class takes and passes its validation; both checksums match; every stored tensor is used;
every torch module is rebuilt from its estimator's parameters (timm backbones with
``pretrained=False``: nothing is downloaded) and its weights match it key by key, in shape
and dtype. A file from another skddh major.minor release is refused; one written by a newer
scikit-learn or torch than the installed one loads with a warning.

The checksums catch corruption (a flipped byte, a truncated copy, edited weights), not
forgery: whoever can write the file can rewrite its checksums. What makes a model file safe
to open is the format itself.

Examples
--------
See :func:`save_policy`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import tempfile
import warnings
import zipfile
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["load_policy", "save_policy"]

#: What ``metadata.json`` calls the format, and the versions this module reads.
FORMAT = "skddh-model"
FORMAT_VERSION = 1
_KNOWN_FORMAT_VERSIONS = (1,)

METADATA = "metadata.json"
ARRAYS = "arrays.safetensors"
_MEMBERS = (METADATA, ARRAYS)
#: ``metadata.json`` is parameters and small arrays of names; anything bigger is not ours.
_MAX_METADATA_BYTES = 64 * 2**20

#: Fitted attributes that are torch modules, rebuilt from the estimator's parameters.
_MODULE_ATTRS = {
    "SimSiamFeaturizer": ("encoder_",),
    "MeasurementRegressor": ("module_",),
    "FineTuningRegressor": ("module_",),
}
#: Attributes not saved, set to these values on loading (a process-local cache key).
_RESET_ATTRS = {"SelectiveImagingPolicy": {"_cache_key_": None}}
_ATTR_NAME = re.compile(r"^_?[A-Za-z][A-Za-z0-9_]*$")
_INDEX_DTYPES = re.compile(r"^(object|str|string|bool|u?int(8|16|32|64)|float(16|32|64))$")
_SCALAR_DTYPES = re.compile(r"^(bool|u?int(8|16|32|64)|float(16|32|64))$")
_TEXT_DTYPES = re.compile(r"^(object|<U[0-9]{1,6})$")
_TAGS = (
    "$estimator",
    "$array",
    "$text_array",
    "$scalar",
    "$float",
    "$tuple",
    "$dict",
    "$frame",
    "$series",
    "$index",
    "$module",
)


def _allowed_classes() -> dict[str, type]:
    """The only classes a model file may name: the policy the CLI builds, and its parts."""
    from sklearn.frozen import FrozenEstimator
    from sklearn.pipeline import Pipeline

    from skddh.conformal import OneSidedConformalRegressor
    from skddh.models import FineTuningRegressor, MeasurementRegressor, SimSiamFeaturizer
    from skddh.policy import GrafAlphaThreshold, SelectiveImagingPolicy

    classes = (
        GrafAlphaThreshold,
        FineTuningRegressor,
        SelectiveImagingPolicy,
        OneSidedConformalRegressor,
        FrozenEstimator,
        Pipeline,
        SimSiamFeaturizer,
        MeasurementRegressor,
    )
    return {cls.__name__: cls for cls in classes}


# ---- versions -----------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    import sklearn
    import torch

    import skddh

    return {
        "skddh": skddh.__version__,
        "scikit-learn": sklearn.__version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


def _release(version: str) -> tuple[int, ...]:
    """``(major, minor, micro)`` from a version string (``"2.14.1+cu130"`` -> (2, 14, 1))."""
    m = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", str(version))
    if m is None:
        return ()
    return tuple(int(g) for g in m.groups(default="0"))


def _check_versions(saved: Any, where: str) -> None:
    if not isinstance(saved, dict) or not all(
        isinstance(saved.get(k), str) for k in ("skddh", "scikit-learn", "torch")
    ):
        raise ValueError(
            f"{where}: 'versions' must give the skddh, scikit-learn and torch versions as strings."
        )
    here = _versions()
    ours, theirs = _release(here["skddh"])[:2], _release(saved["skddh"])[:2]
    if not theirs or ours != theirs:
        raise ValueError(
            f"{where}: written by skddh {saved['skddh']}, this is skddh {here['skddh']}; a "
            f"model file loads only in the skddh release that wrote it (same major.minor). "
            f"Load it with skddh {saved['skddh']}, or refit the model with this one."
        )
    for lib in ("scikit-learn", "torch"):
        if _release(saved[lib]) > _release(here[lib]):
            warnings.warn(
                f"{where}: written with {lib} {saved[lib]}, newer than the installed "
                f"{here[lib]}; it loads, but check its predictions or upgrade {lib}.",
                UserWarning,
                stacklevel=3,
            )


# ---- checksums and JSON -------------------------------------------------------------------
def _canonical(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _strict_object(pairs):
    out = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


# ---- writing ------------------------------------------------------------------------------
class _Writer:
    """Turns an estimator graph into JSON nodes and named CPU tensors (shared objects once)."""

    def __init__(self):
        self.classes = _allowed_classes()
        self.nodes: list = []
        self.tensors: dict = {}
        self._node_ids: dict = {}
        self._array_ids: dict = {}
        self._alive: list = []  # keep what ids were taken of, so ids stay unique

    def estimator(self, obj, where: str) -> int:
        if id(obj) in self._node_ids:
            return self._node_ids[id(obj)]
        name = type(obj).__name__
        if self.classes.get(name) is not type(obj):
            raise TypeError(
                f"cannot save {where}: {type(obj).__module__}.{type(obj).__qualname__} is not "
                f"one of the classes a skddh model file holds ({', '.join(self.classes)}). "
                "Save other models with joblib.dump, and load such files only from sources "
                "you trust: loading a joblib or pickle file runs code."
            )
        index = len(self.nodes)
        self._node_ids[id(obj)] = index
        self._alive.append(obj)
        self.nodes.append(None)
        params = obj.get_params(deep=False)
        enc_params = {k: self.value(v, f"{where}.{k}", "parameter") for k, v in params.items()}
        attrs = {}
        for key, value in vars(obj).items():
            if key in params or key in _RESET_ATTRS.get(name, {}):
                continue
            here = f"{where}.{key}"
            if not _ATTR_NAME.match(key) or key.startswith("__"):
                raise TypeError(f"cannot save {here}: attribute name {key!r} is not supported.")
            if key in _MODULE_ATTRS.get(name, ()):
                attrs[key] = {"$module": self.module(value, f"{index}.{key}/", here)}
            else:
                attrs[key] = self.value(value, here, "fitted attribute")
        self.nodes[index] = {"class": name, "params": enc_params, "attributes": attrs}
        return index

    def module(self, module, prefix: str, where: str) -> str:
        import torch

        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"cannot save {where}: expected a torch module, got {type(module)}.")
        for key, tensor in module.state_dict().items():
            # A CPU copy of its own (no shared storage), so a GPU model loads without CUDA.
            self.tensors[prefix + key] = tensor.detach().to("cpu", copy=True).contiguous()
        return prefix

    def array(self, arr: np.ndarray, where: str, what: str):
        if arr.dtype.kind in "OU":
            dtype = arr.dtype.newbyteorder("<").str if arr.dtype.kind == "U" else "object"
            flat = arr.ravel()
            for i, v in enumerate(flat):
                if not (v is None or isinstance(v, (bool, int, float, str, np.number, np.bool_))):
                    raise TypeError(
                        f"cannot save {what} {where}: element {i} of an object array is a "
                        f"{type(v).__name__}; only numbers and strings are saved."
                    )
            values = [self.value(v, f"{where}[{i}]", what) for i, v in enumerate(flat)]
            return {"$text_array": {"dtype": dtype, "shape": list(arr.shape), "values": values}}
        if arr.dtype.kind not in "biuf" or arr.dtype.fields is not None:
            raise TypeError(
                f"cannot save {what} {where}: arrays of dtype {arr.dtype} are not supported "
                "(numbers, booleans and strings are)."
            )
        if id(arr) not in self._array_ids:
            import torch

            name = f"array{len(self._array_ids)}"
            native = np.array(arr, dtype=arr.dtype.newbyteorder("="), order="C", copy=True)
            try:
                self.tensors[name] = torch.from_numpy(native)
            except TypeError as exc:
                raise TypeError(f"cannot save {what} {where}: {exc}") from None
            self._array_ids[id(arr)] = name
            self._alive.append(arr)
        return {"$array": self._array_ids[id(arr)]}

    def index(self, index: pd.Index, where: str, what: str):
        if isinstance(index, pd.RangeIndex):
            return {
                "$index": {
                    "range": [index.start, index.stop, index.step],
                    "name": self.value(index.name, f"{where}.name", what),
                }
            }
        dtype = str(index.dtype)
        if isinstance(index, pd.MultiIndex) or not _INDEX_DTYPES.match(dtype):
            raise TypeError(
                f"cannot save {what} {where}: a {type(index).__name__} of dtype {dtype} is not "
                "supported (flat indexes of numbers or strings are)."
            )
        values = np.asarray(index.to_numpy(dtype=object if dtype in ("str", "string") else None))
        return {
            "$index": {
                "values": self.array(values, f"{where}.values", what),
                "dtype": dtype,
                "name": self.value(index.name, f"{where}.name", what),
            }
        }

    def value(self, v, where: str, what: str):
        from sklearn.base import BaseEstimator

        if isinstance(v, np.generic):  # first: np.float64 is a float, np.str_ a str
            if isinstance(v, np.str_):
                return str(v)
            if not _SCALAR_DTYPES.match(v.dtype.name):
                raise TypeError(f"cannot save {what} {where}: numpy {v.dtype} scalars.")
            return {"$scalar": {"dtype": v.dtype.name, "value": self.value(v.item(), where, what)}}
        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, int):
            return int(v)
        if isinstance(v, float):
            return float(v) if math.isfinite(v) else {"$float": repr(float(v))}
        if isinstance(v, tuple):
            return {"$tuple": [self.value(x, f"{where}[{i}]", what) for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.value(x, f"{where}[{i}]", what) for i, x in enumerate(v)]
        if isinstance(v, dict):
            pairs = []
            for k, x in v.items():
                if not isinstance(k, (str, int, float, np.generic)) or k is None:
                    raise TypeError(f"cannot save {what} {where}: dict key {k!r} is not a scalar.")
                pairs.append([self.value(k, where, what), self.value(x, f"{where}[{k!r}]", what)])
            return {"$dict": pairs}
        if isinstance(v, np.ndarray):
            return self.array(v, where, what)
        if isinstance(v, pd.DataFrame):
            data = []
            for j in range(v.shape[1]):
                col = v.iloc[:, j]
                if not isinstance(col.dtype, np.dtype):
                    raise TypeError(
                        f"cannot save {what} {where}: column {v.columns[j]!r} has pandas dtype "
                        f"{col.dtype}; only numpy dtypes are supported."
                    )
                data.append(self.array(col.to_numpy(), f"{where}[{v.columns[j]!r}]", what))
            return {
                "$frame": {
                    "columns": self.index(v.columns, f"{where}.columns", what),
                    "index": self.index(v.index, f"{where}.index", what),
                    "data": data,
                }
            }
        if isinstance(v, pd.Series):
            if not isinstance(v.dtype, np.dtype):
                raise TypeError(f"cannot save {what} {where}: pandas dtype {v.dtype}.")
            return {
                "$series": {
                    "index": self.index(v.index, f"{where}.index", what),
                    "values": self.array(v.to_numpy(), f"{where}.values", what),
                    "name": self.value(v.name, f"{where}.name", what),
                }
            }
        if isinstance(v, pd.Index):
            return self.index(v, where, what)
        if isinstance(v, BaseEstimator):
            return {"$estimator": self.estimator(v, where)}
        raise TypeError(
            f"cannot save {what} {where}: a {type(v).__module__}.{type(v).__qualname__} is not "
            "JSON-able (a skddh model file holds numbers, strings, lists, tuples, dicts, numpy "
            "arrays, DataFrames and the estimators it knows). Use plain values, or joblib.dump "
            "for a file you will load only from a trusted source."
        )


def save_policy(policy, path: str | os.PathLike, *, extra: dict | None = None) -> Path:
    """Write a fitted :class:`~skddh.SelectiveImagingPolicy` to a model file that runs no code.

    The policy must be the one ``skddh fit`` builds: a
    :class:`~skddh.OneSidedConformalRegressor` over a pipeline of a frozen
    :class:`~skddh.SimSiamFeaturizer` and a :class:`~skddh.MeasurementRegressor` (the
    pipeline itself frozen or not). Torch weights are written from CPU copies, so a model
    fitted on a GPU loads on a machine without one. See :mod:`skddh.model_file` for the
    layout and what loading checks.

    Parameters
    ----------
    policy : SelectiveImagingPolicy
        Fitted.
    path : str or path-like
        Where to write; an existing file is replaced (atomically: a half-written file never
        takes its place).
    extra : dict, default=None
        JSON-able information to keep with the model (str keys; numbers, strings, lists,
        dicts), e.g. ``{"image_size": 128}``. :func:`load_policy` gives it back with
        ``return_metadata=True``, under ``"extra"``.

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    TypeError
        If any part of the policy is not one of the classes a model file holds (the message
        names it, and says to use :func:`joblib.dump` for files you trust), or a parameter
        or fitted attribute is not JSON-able data (the message names it), or ``extra`` is
        not JSON-able.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> import numpy as np, pandas as pd
    >>> from sklearn.frozen import FrozenEstimator
    >>> from sklearn.pipeline import make_pipeline
    >>> from skddh import (MeasurementRegressor, OneSidedConformalRegressor,
    ...                    SelectiveImagingPolicy, SimSiamFeaturizer)
    >>> from skddh.model_file import load_policy, save_policy
    >>> rng = np.random.default_rng(0)
    >>> images = rng.integers(0, 255, (24, 16, 16), dtype=np.uint8)
    >>> y = pd.DataFrame({"alpha": rng.normal(60, 5, 24), "coverage": rng.normal(50, 5, 24)})
    >>> encoder = SimSiamFeaturizer(image_size=16, epochs=1, batch_size=12, projection_dim=16,
    ...                             prediction_dim=8, device="cpu", random_state=0).fit(images)
    >>> model = OneSidedConformalRegressor(
    ...     make_pipeline(FrozenEstimator(encoder),
    ...                   MeasurementRegressor(hidden=8, epochs=2, device="cpu", random_state=0)),
    ...     delta=0.2, calibration_size=0.5, random_state=0)
    >>> policy = SelectiveImagingPolicy(model, rule="alpha", delta=0.2)
    >>> policy = policy.fit(images, y, groups=np.arange(24) // 2)
    >>> path = save_policy(policy, pathlib.Path(tempfile.mkdtemp()) / "policy.skddh",
    ...                    extra={"image_size": 16})
    >>> loaded, meta = load_policy(path, return_metadata=True)
    >>> loaded.predict_lower(images).equals(policy.predict_lower(images))
    True
    >>> meta["extra"]
    {'image_size': 16}
    """
    from sklearn.utils.validation import check_is_fitted

    from skddh.policy import SelectiveImagingPolicy

    if type(policy) is not SelectiveImagingPolicy:
        raise TypeError(
            f"save_policy saves a SelectiveImagingPolicy, got {type(policy).__qualname__}; "
            "use joblib.dump for other objects (and load those only from trusted sources)."
        )
    check_is_fitted(policy)
    extra = {} if extra is None else extra
    try:
        if not isinstance(extra, dict) or not all(isinstance(k, str) for k in extra):
            raise TypeError("it must be a dict with str keys")
        extra_json = json.loads(json.dumps(extra, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise TypeError(f"extra is not JSON-able: {exc}.") from None

    import safetensors.torch

    writer = _Writer()
    root = writer.estimator(policy, "policy")
    model = {"root": root, "estimators": writer.nodes}
    arrays = safetensors.torch.save(writer.tensors)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "extra": extra_json,
        "checksums": {
            ARRAYS: _sha256(arrays),
            "model": _sha256(_canonical({"model": model, "extra": extra_json})),
        },
        "model": model,
    }
    meta_bytes = json.dumps(metadata, indent=1, allow_nan=False).encode()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh, zipfile.ZipFile(fh, "w") as zf:
            zf.writestr(METADATA, meta_bytes, compress_type=zipfile.ZIP_DEFLATED)
            zf.writestr(ARRAYS, arrays, compress_type=zipfile.ZIP_STORED)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


# ---- reading ------------------------------------------------------------------------------
class _Reader:
    """Rebuilds the estimator graph from JSON nodes and named tensors, allow-listed classes only."""

    def __init__(self, nodes, tensors, device, where):
        self.classes = _allowed_classes()
        self.nodes = nodes
        self.tensors = tensors
        self.device = device
        self.where = where
        self.done: dict = {}
        self.building: set = set()
        self.used: set = set()
        self.arrays: dict = {}

    def fail(self, key: str, message: str):
        raise ValueError(f"{self.where}: {key}: {message}")

    def estimator(self, index, key: str):
        if (
            not isinstance(index, int)
            or isinstance(index, bool)
            or not 0 <= index < len(self.nodes)
        ):
            self.fail(key, f"estimator reference {index!r} is not a node of model.estimators.")
        if index in self.done:
            return self.done[index]
        if index in self.building:
            self.fail(key, f"estimator {index} refers back to itself.")
        self.building.add(index)
        node_key = f"model.estimators[{index}]"
        node = self.nodes[index]
        if not isinstance(node, dict) or set(node) != {"class", "params", "attributes"}:
            self.fail(node_key, "must be an object with keys class, params, attributes.")
        name = node["class"]
        cls = self.classes.get(name) if isinstance(name, str) else None
        if cls is None:
            self.fail(
                f"{node_key}.class",
                f"{name!r} is not one of the classes a skddh model file may hold "
                f"({', '.join(self.classes)}); nothing was imported or run.",
            )
        params, attrs = node["params"], node["attributes"]
        if not isinstance(params, dict) or not isinstance(attrs, dict):
            self.fail(node_key, "params and attributes must be objects.")
        allowed = set(cls._get_param_names())
        unknown = sorted(set(params) - allowed)
        if unknown:
            self.fail(f"{node_key}.params", f"{name} takes no parameter(s) {unknown}.")
        decoded = {k: self.value(v, f"{node_key}.params.{k}") for k, v in params.items()}
        obj = cls(**decoded)
        try:
            if hasattr(obj, "_parameter_constraints"):
                obj._validate_params()
            if name == "Pipeline":
                obj._validate_steps()  # each step an estimator of the allow-list
        except (TypeError, ValueError, AttributeError) as exc:
            self.fail(f"{node_key}.params", f"invalid {name} parameters: {exc}")
        modules = {}
        for attr, enc in attrs.items():
            akey = f"{node_key}.attributes.{attr}"
            if (
                not _ATTR_NAME.match(attr)
                or attr.startswith("__")
                or attr in allowed
                or hasattr(cls, attr)
            ):
                self.fail(akey, f"{attr!r} is not a fitted attribute {name} can have.")
            if attr in _MODULE_ATTRS.get(name, ()):
                if not isinstance(enc, dict) or set(enc) != {"$module"}:
                    self.fail(akey, "must be a {'$module': prefix} reference.")
                modules[attr] = (enc["$module"], akey)
            else:
                setattr(obj, attr, self.value(enc, akey))
        for attr, value in _RESET_ATTRS.get(name, {}).items():
            setattr(obj, attr, value)
        missing = [a for a in _MODULE_ATTRS.get(name, ()) if a not in modules]
        if missing and attrs:
            self.fail(f"{node_key}.attributes", f"a fitted {name} needs {missing}.")
        for attr, (prefix, akey) in modules.items():
            setattr(obj, attr, self.module(obj, attr, prefix, akey))
        if name in _MODULE_ATTRS:
            obj.set_params(device=str(self.device))
            if hasattr(obj, "device_"):
                obj.device_ = str(self.device)
        self.building.discard(index)
        self.done[index] = obj
        return obj

    def module(self, est, attr: str, prefix, key: str):
        from skddh.models import _torch as T

        if not isinstance(prefix, str):
            self.fail(key, "the $module prefix must be a string.")
        try:
            with T.seeded(0):  # timm draws its (discarded) init from the global RNG
                module = _rebuild_module(est, attr)
        except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            self.fail(key, f"cannot rebuild the module from the saved parameters: {exc}")
        expected = module.state_dict()
        state = {k[len(prefix) :]: t for k, t in self.tensors.items() if k.startswith(prefix)}
        lacking = [k for k in expected if k not in state]
        surplus = [k for k in state if k not in expected]
        if lacking or surplus:
            self.fail(
                key,
                f"{ARRAYS} does not fit the rebuilt {type(module).__name__}: missing "
                f"tensor(s) {[prefix + k for k in lacking][:5]}, unexpected "
                f"{[prefix + k for k in surplus][:5]}.",
            )
        for k, t in expected.items():
            if state[k].shape != t.shape or state[k].dtype != t.dtype:
                self.fail(
                    key,
                    f"tensor {prefix + k!r} in {ARRAYS} is {state[k].dtype} "
                    f"{tuple(state[k].shape)}; the rebuilt module wants {t.dtype} "
                    f"{tuple(t.shape)}.",
                )
        module.load_state_dict(state, strict=True)
        self.used.update(prefix + k for k in state)
        module = module.to(self.device).eval()
        if attr == "encoder_":
            for p in module.parameters():
                p.requires_grad_(False)
        return module

    def tensor_array(self, name, key):
        if not isinstance(name, str) or name not in self.tensors:
            self.fail(key, f"names tensor {name!r}, which {ARRAYS} does not hold.")
        if name not in self.arrays:
            try:
                self.arrays[name] = self.tensors[name].numpy()
            except (TypeError, RuntimeError) as exc:
                self.fail(key, f"tensor {name!r} is not a numpy array: {exc}")
            self.used.add(name)
        return self.arrays[name]

    def index(self, enc, key):
        if (
            not isinstance(enc, dict)
            or set(enc) != {"$index"}
            or not isinstance(enc["$index"], dict)
        ):
            self.fail(key, "must be an {'$index': ...} object.")
        body = enc["$index"]
        name = self.value(body.get("name"), f"{key}.name")
        if set(body) == {"range", "name"}:
            r = body["range"]
            if not (isinstance(r, list) and len(r) == 3 and all(type(x) is int for x in r)):
                self.fail(key, "range must be three integers.")
            return pd.RangeIndex(*r, name=name)
        if set(body) != {"values", "dtype", "name"} or not isinstance(body["dtype"], str):
            self.fail(key, "must hold values, dtype and name (or range and name).")
        if not _INDEX_DTYPES.match(body["dtype"]):
            self.fail(key, f"index dtype {body['dtype']!r} is not supported.")
        values = self.value(body["values"], f"{key}.values")
        if not isinstance(values, np.ndarray) or values.ndim != 1:
            self.fail(key, "index values must be a 1-D array.")
        try:
            return pd.Index(values, dtype=body["dtype"], name=name)
        except (TypeError, ValueError) as exc:
            self.fail(key, f"bad index: {exc}")

    def value(self, enc, key: str):
        if enc is None or isinstance(enc, (bool, str, int, float)):
            return enc
        if isinstance(enc, list):
            return [self.value(x, f"{key}[{i}]") for i, x in enumerate(enc)]
        if not isinstance(enc, dict) or len(enc) != 1 or next(iter(enc)) not in _TAGS:
            self.fail(key, f"an object must have exactly one key out of {list(_TAGS)}.")
        tag, body = next(iter(enc.items()))
        if tag == "$estimator":
            return self.estimator(body, key)
        if tag == "$array":
            return self.tensor_array(body, key)
        if tag == "$float":
            if body not in ("inf", "-inf", "nan"):
                self.fail(key, f"$float must be 'inf', '-inf' or 'nan', got {body!r}.")
            return float(body)
        if tag == "$scalar":
            if not isinstance(body, dict) or set(body) != {"dtype", "value"}:
                self.fail(key, "$scalar must hold dtype and value.")
            if not isinstance(body["dtype"], str) or not _SCALAR_DTYPES.match(body["dtype"]):
                self.fail(key, f"scalar dtype {body['dtype']!r} is not supported.")
            value = self.value(body["value"], key)
            if not isinstance(value, (bool, int, float)):
                self.fail(key, "a scalar's value must be a number.")
            try:
                return np.dtype(body["dtype"]).type(value)
            except (OverflowError, TypeError, ValueError) as exc:
                self.fail(key, f"bad {body['dtype']} scalar {value!r}: {exc}")
        if tag == "$tuple":
            if not isinstance(body, list):
                self.fail(key, "$tuple must hold a list.")
            return tuple(self.value(x, f"{key}[{i}]") for i, x in enumerate(body))
        if tag == "$dict":
            if not isinstance(body, list) or not all(
                isinstance(p, list) and len(p) == 2 for p in body
            ):
                self.fail(key, "$dict must hold a list of [key, value] pairs.")
            out = {}
            for k, v in body:
                k = self.value(k, key)
                if not isinstance(k, (str, int, float, np.generic)) or k is None or k in out:
                    self.fail(key, f"dict key {k!r} is not a scalar, or is repeated.")
                out[k] = self.value(v, f"{key}[{k!r}]")
            return out
        if tag == "$text_array":
            if not isinstance(body, dict) or set(body) != {"dtype", "shape", "values"}:
                self.fail(key, "$text_array must hold dtype, shape and values.")
            dtype, shape, values = body["dtype"], body["shape"], body["values"]
            if not isinstance(dtype, str) or not _TEXT_DTYPES.match(dtype):
                self.fail(key, f"text array dtype {dtype!r} is not supported.")
            if not (
                isinstance(shape, list)
                and all(type(s) is int and s >= 0 for s in shape)
                and isinstance(values, list)
                and math.prod(shape) == len(values)
            ):
                self.fail(key, "shape and the number of values do not agree.")
            items = [self.value(v, f"{key}[{i}]") for i, v in enumerate(values)]
            if not all(
                x is None or isinstance(x, (str, bool, int, float, np.generic)) for x in items
            ):
                self.fail(key, "a text array holds only numbers and strings.")
            arr = np.empty(len(items), dtype=np.dtype(dtype))
            arr[:] = items
            return arr.reshape(shape)
        if tag == "$frame":
            if not isinstance(body, dict) or set(body) != {"columns", "index", "data"}:
                self.fail(key, "$frame must hold columns, index and data.")
            columns = self.index(body["columns"], f"{key}.columns")
            index = self.index(body["index"], f"{key}.index")
            if not isinstance(body["data"], list) or len(body["data"]) != len(columns):
                self.fail(key, "a frame needs one data array per column.")
            data = [self.value(c, f"{key}.data[{j}]") for j, c in enumerate(body["data"])]
            if not all(isinstance(c, np.ndarray) and c.shape == (len(index),) for c in data):
                self.fail(key, "each column must be a 1-D array as long as the index.")
            frame = pd.DataFrame(dict(enumerate(data)), index=index)
            frame.columns = columns
            return frame
        if tag == "$series":
            if not isinstance(body, dict) or set(body) != {"index", "values", "name"}:
                self.fail(key, "$series must hold index, values and name.")
            index = self.index(body["index"], f"{key}.index")
            values = self.value(body["values"], f"{key}.values")
            if not isinstance(values, np.ndarray) or values.shape != (len(index),):
                self.fail(key, "series values must be a 1-D array as long as the index.")
            return pd.Series(values, index=index, name=self.value(body["name"], f"{key}.name"))
        if tag == "$index":
            return self.index(enc, key)
        self.fail(key, f"{tag} is not allowed here.")  # $module outside a module attribute


def _rebuild_module(est, attr: str):
    """A freshly initialised module of the saved architecture, from the estimator's state."""
    from skddh.models import FineTuningRegressor, MeasurementRegressor, SimSiamFeaturizer

    if isinstance(est, SimSiamFeaturizer) and attr == "encoder_":
        import timm

        from skddh.models._simsiam import _build

        if not timm.is_model(est.backbone):  # never a hub or local-dir name: no download
            raise ValueError(f"backbone {est.backbone!r} is not a model timm knows.")
        encoder, _, _ = _build(
            est.backbone, int(est.n_channels_in_), est.projection_dim, est.prediction_dim
        )
        return encoder
    if isinstance(est, MeasurementRegressor) and attr == "module_":
        from skddh.models._head import _build_module

        n_out = len(est._reg) + sum(len(est.classes_[t]) for t in est._cls)
        return _build_module(int(est.n_features_in_), est.hidden, est.dropout, n_out)
    if isinstance(est, FineTuningRegressor) and attr == "module_":
        import timm

        from skddh.models._finetune import _build_network

        if not timm.is_model(est.backbone_):  # never a hub or local-dir name: no download
            raise ValueError(f"backbone {est.backbone_!r} is not a model timm knows.")
        return _build_network(
            est.backbone_, int(est.n_channels_in_), est.hidden, est.dropout, est._n_outputs
        )
    raise ValueError(f"no module {attr!r} on {type(est).__name__}.")


def _read_members(path: Path) -> tuple[dict, bytes]:
    """``metadata.json`` (parsed) and the raw ``arrays.safetensors`` of a model file."""
    hint = (
        "a skddh model file is a zip written by skddh.model_file.save_policy; a joblib or "
        "pickle file runs code when loaded: open one with joblib.load only if you trust it"
    )
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ValueError(f"{path}: not a skddh model file: not a zip archive ({hint}).") from None
    except OSError as exc:
        if isinstance(exc, (FileNotFoundError, IsADirectoryError, PermissionError)):
            raise
        raise ValueError(f"{path}: not a skddh model file: {exc} ({hint}).") from None
    with zf:
        names = [info.filename for info in zf.infolist()]
        repeated = sorted({n for n in names if names.count(n) > 1})
        surplus = [n for n in names if n not in _MEMBERS]
        lacking = [n for n in _MEMBERS if n not in names]
        if repeated or surplus or lacking:
            parts = [
                f"{label} {items}"
                for label, items in (
                    ("unexpected member(s)", surplus),
                    ("repeated member(s)", repeated),
                    ("missing member(s)", lacking),
                )
                if items
            ]
            raise ValueError(
                f"{path}: not a skddh model file: {'; '.join(parts)} (it must hold exactly "
                f"{list(_MEMBERS)}; nothing was read)."
            )
        if zf.getinfo(METADATA).file_size > _MAX_METADATA_BYTES:
            raise ValueError(f"{path}: member {METADATA!r} is implausibly large.")
        raw = {}
        for name in _MEMBERS:
            try:
                raw[name] = zf.read(name)
            except zipfile.BadZipFile as exc:  # CRC-32 mismatch, bad local header
                raise ValueError(
                    f"{path}: member {name!r} is corrupted (zip checksum CRC-32 or header: {exc})."
                ) from None
            except (RuntimeError, NotImplementedError, OSError, EOFError, zlib.error) as exc:
                raise ValueError(f"{path}: member {name!r} cannot be read: {exc}.") from None
    try:
        metadata = json.loads(
            raw[METADATA].decode("utf-8"),
            object_pairs_hook=_strict_object,
            parse_constant=_reject_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ValueError(f"{path}: member {METADATA!r} is not valid JSON: {exc}.") from None
    if not isinstance(metadata, dict):
        raise ValueError(f"{path}: member {METADATA!r} must hold a JSON object.")
    return metadata, raw[ARRAYS]


def load_policy(path: str | os.PathLike, *, device: str = "cpu", return_metadata: bool = False):
    """Read a policy written by :func:`save_policy`, running no code from the file.

    Parameters
    ----------
    path : str or path-like
        A model file.
    device : {"cpu", "cuda", "auto"} or str, default="cpu"
        Where the torch parts run: their weights are moved there, and their ``device``
        parameter (and ``device_``) set to it, whatever device the model was fitted on.
        ``"auto"`` picks CUDA when available.
    return_metadata : bool, default=False
        Also return the file's metadata (versions, creation time, ``extra``, checksums).

    Returns
    -------
    policy : SelectiveImagingPolicy
        Fitted; predicts exactly like the saved one on the same device.
    metadata : dict
        Only with ``return_metadata=True``: ``metadata.json`` without the model itself.

    Raises
    ------
    ValueError
        If the file is not a valid model file, naming what is wrong (the member, the key):
        not a zip, members other than ``metadata.json`` and ``arrays.safetensors``, an
        unknown format version, a class outside the allow-list, a checksum mismatch
        (corrupted weights), tensors that do not fit the rebuilt modules, or another skddh
        major.minor release; or if ``device`` asks for CUDA where there is none.
    FileNotFoundError
        If ``path`` does not exist.

    Warns
    -----
    UserWarning
        If the file was written with a newer scikit-learn or torch than the installed one.

    Examples
    --------
    A pickle is refused before anything in it is read:

    >>> import pickle, tempfile, pathlib
    >>> from skddh.model_file import load_policy
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "policy.joblib"
    >>> _ = path.write_bytes(pickle.dumps({"policy": None}))
    >>> load_policy(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: ...policy.joblib: not a skddh model file: not a zip archive (...).

    See :func:`save_policy` for a round trip.
    """
    import safetensors
    import safetensors.torch

    from skddh.models import _torch as T

    path = Path(path)
    where = str(path)
    if not isinstance(device, str):
        raise TypeError(f"device must be a str such as 'cpu', 'cuda' or 'auto', got {device!r}.")
    try:
        resolved = T.resolve_device(device)
    except RuntimeError as exc:
        raise ValueError(f"device={device!r} is not a torch device: {exc}") from None
    metadata, arrays = _read_members(path)
    m = METADATA
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{where}: {m}: format is {metadata.get('format')!r}, not {FORMAT!r}.")
    version = metadata.get("format_version")
    if version not in _KNOWN_FORMAT_VERSIONS or isinstance(version, bool):
        raise ValueError(
            f"{where}: {m}: format_version {version!r} is not one this skddh reads "
            f"({list(_KNOWN_FORMAT_VERSIONS)}); a newer skddh wrote it?"
        )
    needed = {"created", "versions", "extra", "checksums", "model"}
    if not needed <= set(metadata):
        raise ValueError(f"{where}: {m}: missing key(s) {sorted(needed - set(metadata))}.")
    _check_versions(metadata["versions"], f"{where}: {m}")
    sums = metadata["checksums"]
    if not isinstance(sums, dict) or not all(
        isinstance(sums.get(k), str) for k in (ARRAYS, "model")
    ):
        raise ValueError(f"{where}: {m}: checksums must give {ARRAYS!r} and 'model' as strings.")
    actual = _sha256(arrays)
    if actual != sums[ARRAYS]:
        raise ValueError(
            f"{where}: member {ARRAYS!r} fails its SHA-256 checksum (metadata says "
            f"{sums[ARRAYS][:16]}..., the content is {actual[:16]}...): the weights are "
            "corrupted or were edited; nothing was loaded."
        )
    model, extra = metadata["model"], metadata["extra"]
    if _sha256(_canonical({"model": model, "extra": extra})) != sums["model"]:
        raise ValueError(
            f"{where}: {m}: 'model' and 'extra' fail their SHA-256 checksum (checksums.model): "
            "the metadata is corrupted or was edited; nothing was loaded."
        )
    if not isinstance(model, dict) or set(model) != {"root", "estimators"}:
        raise ValueError(f"{where}: {m}: model must hold exactly root and estimators.")
    if not isinstance(model["estimators"], list):
        raise ValueError(f"{where}: {m}: model.estimators must be a list.")
    try:
        tensors = safetensors.torch.load(arrays)
    except Exception as exc:  # safetensors raises its own SafetensorError (an Exception)
        raise ValueError(
            f"{where}: member {ARRAYS!r} is not a valid safetensors file: {exc}."
        ) from None
    reader = _Reader(model["estimators"], tensors, resolved, f"{where}: {m}")
    try:
        policy = reader.estimator(model["root"], "model.root")
    except RecursionError:
        raise ValueError(f"{where}: {m}: the model is nested too deeply.") from None
    from skddh.policy import SelectiveImagingPolicy

    if type(policy) is not SelectiveImagingPolicy:
        raise ValueError(f"{where}: {m}: model.root is a {type(policy).__name__}, not a policy.")
    unbuilt = sorted(set(range(len(model["estimators"]))) - set(reader.done))
    if unbuilt:
        raise ValueError(
            f"{where}: {m}: model.estimators {unbuilt[:5]} are not part of the policy."
        )
    unused = sorted(set(tensors) - reader.used)
    if unused:
        raise ValueError(
            f"{where}: member {ARRAYS!r} holds tensor(s) no estimator uses: {unused[:5]}."
        )
    if not return_metadata:
        return policy
    return policy, {k: v for k, v in metadata.items() if k != "model"}
