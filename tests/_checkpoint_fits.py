"""The fits of tests/test_checkpoint.py, and the one it kills mid-epoch in a subprocess.

:func:`fit_until_killed` (run in a forked process, or as ``python _checkpoint_fits.py KIND
CHECKPOINT PAUSE_FROM`` where fork is not the way) fits ``KIND`` ("simsiam" or "finetune")
with ``checkpoint=CHECKPOINT, checkpoint_every=1`` on one torch thread (the test fits on one
too: another thread count may round differently). From step ``PAUSE_FROM`` on, each
checkpoint write is followed by a pause, so that the parent, which polls the file, kills the
process with SIGKILL inside an epoch even on a loaded machine; the pause changes no number.
"""

import sys
import time

import numpy as np
import pandas as pd

N, BATCH, EPOCHS = 24, 8, 2  # 3 steps an epoch, 6 in all
KINDS = ("simsiam", "finetune")


def data():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (N, 32, 32), dtype=np.uint8)
    level = images.mean((1, 2))
    y = pd.DataFrame({"level": level, "grade": (level > np.median(level)).astype(int)})
    return images, y


def estimator(kind, **kw):
    from skddh import FineTuningRegressor, SimSiamFeaturizer

    common = dict(image_size=32, epochs=EPOCHS, batch_size=BATCH, device="cpu", random_state=0)
    common.update(kw)
    if kind == "simsiam":
        return SimSiamFeaturizer("test_resnet", projection_dim=32, prediction_dim=16, **common)
    # Dropout, the weight average and a classification target: every state a resume needs.
    return FineTuningRegressor(
        backbone="test_resnet", ema_decay=0.9, classification_targets=("grade",), **common
    )


def fit(est, images=None, y=None):
    if images is None:
        images, y = data()
    return est.fit(images, None if hasattr(est, "transform") else y)


def output(est, images):
    return est.transform(images) if hasattr(est, "transform") else est.predict(images)


def network(est):
    return est.encoder_ if hasattr(est, "encoder_") else est.module_


def fit_until_killed(kind, path, pause_from):
    """The killed fit: one torch thread, a pause after each checkpoint from ``pause_from``."""
    import torch

    from skddh.models import _checkpoint as C

    torch.set_num_threads(1)
    save = C.Checkpointer.save

    def save_then_pause(self, loop):
        save(self, loop)
        if loop["step"] >= int(pause_from):
            time.sleep(5.0)

    C.Checkpointer.save = save_then_pause
    fit(estimator(kind, checkpoint=path, checkpoint_every=1))


if __name__ == "__main__":
    fit_until_killed(*sys.argv[1:])
