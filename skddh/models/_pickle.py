"""Pickling torch estimators so that a GPU-fitted model loads on a CPU-only machine."""

from __future__ import annotations


class CPUStateMixin:
    """``__getstate__`` that stores the fitted torch modules named in ``_torch_attributes``
    on the CPU (:func:`skddh.models._torch.cpu_state`); torch is imported only when one is
    there."""

    _torch_attributes: tuple[str, ...] = ("module_",)

    def __getstate__(self):
        state = super().__getstate__()
        present = [a for a in self._torch_attributes if a in state]
        if present:
            from skddh.models import _torch as T

            for a in present:
                state[a] = T.cpu_state(state[a])
        return state
