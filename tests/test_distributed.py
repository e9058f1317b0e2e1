"""Data-parallel fits (skddh.models._distributed): 2 CPU processes, gloo, against one process.

Two forked processes (a fresh interpreter would spend seconds importing torch and timm)
fit with world size 2 and global batch B, and are compared with one process fitting with
batch B. Augmentation is switched off (every strength 0, a full-image crop: each view is the
image itself) and so is dropout: each rank's random stream is its own (a 2-rank fit cannot
draw, row by row, what one process draws for the whole batch), so only a deterministic
setting allows a weight-by-weight comparison. What remains differs only by the order of
floating-point additions (batch statistics summed over two shards, gradients averaged over
two ranks): over these 6 or 8 steps the weights agree to ~3e-7, checked at 1e-5 (float32).
That is the size of the difference between two single-process fits on 1 and on 2 torch
threads (2e-7 to 5e-7 here), another reordering of the same sums. Not every setting is so
tame: with batch_size=9 a ReLU or max-pool tie flips within 3 steps and even 1 vs 2 threads
differ by 5e-4 (observed), so a setting is chosen where the thread test agrees to 5e-7.
Fine-tuning trains with AdamW, which divides each update by the gradient's running RMS: a
parameter whose gradient is nearly 0 moves by about the learning rate in a direction set by
rounding, so there 1 vs 2 threads already differ by 2.7e-4 (observed) and the 2-rank fit by
9e-5; it is checked at 1e-3, against 0.46 between fits with batch sizes 7 and 8.
Batch sizes are odd, so that shards are uneven and the loss weighting by shard size counts.

The SimSiam fit initialises its process group from torchrun's environment variables; the
fine-tuning fit joins a group the caller initialised, is interrupted after a checkpoint
and resumed by both ranks from rank 0's file.
"""

import contextlib
import io
import multiprocessing
import os
import pickle
import socket
import sys
import traceback
import warnings
from pathlib import Path

import numpy as np
import pytest
import timm  # noqa: F401  (imported once here, not in every forked fit)
import torch
from _checkpoint_fits import data

from skddh import FineTuningRegressor, SimSiamFeaturizer
from skddh.models import _checkpoint as C
from skddh.models import _distributed as D

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux") or not torch.distributed.is_available(),
    reason="forked gloo workers (Linux)",
)

WORLD = 2
# Largest weight difference (and loss difference) allowed against one process; see above.
ATOL = {"simsiam": (1e-5, 2e-6), "finetune": (1e-3, 1e-4)}
INTERRUPT_AT = 5  # fine-tuning: the 2nd step of the 2nd epoch (4 steps an epoch)

FIXED_VIEWS = dict(  # SimSiam: each view is the image itself
    crop_scale=(1.0, 1.0),
    crop_ratio=(1.0, 1.0),
    flip_p=0.0,
    rotation=0.0,
    brightness=0.0,
    contrast=0.0,
    gamma=0.0,
    blur_p=0.0,
    speckle=0.0,
)
FIXED_MEASURE = dict(  # fine-tuning: no augmentation, no dropout
    rotation=0.0,
    scale=(1.0, 1.0),
    shift=0.0,
    brightness=0.0,
    contrast=0.0,
    gamma=0.0,
    noise=0.0,
    dropout=0.0,
)


def simsiam(**kw):
    return SimSiamFeaturizer(
        "test_resnet",
        image_size=32,
        epochs=2,
        batch_size=11,  # 24 images: global batches 11, 11, 2; shards 6/5, 6/5, 1/1
        projection_dim=32,
        prediction_dim=16,
        device="cpu",
        random_state=0,
        **FIXED_VIEWS,
        **kw,
    )


def finetune(**kw):
    return FineTuningRegressor(
        backbone="test_resnet",
        image_size=32,
        epochs=2,
        batch_size=7,  # 24 images: 7, 7, 7, 3; shards 4/3 and, last, 2/1
        ema_decay=0.9,
        classification_targets=("grade",),
        device="cpu",
        random_state=0,
        **FIXED_MEASURE,
        **kw,
    )


def _network(est):
    return est.encoder_ if hasattr(est, "encoder_") else est.module_


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _count_writes(writes):
    """Record every checkpoint file written (rank 0's only, we expect)."""
    real = C.atomic_write

    def counting(path, *a, **k):
        writes.append(str(path))
        return real(path, *a, **k)

    C.atomic_write = counting


def _simsiam_rank(rank, port, ckpt):
    os.environ.update(  # what torchrun sets: the estimator initialises the group itself
        WORLD_SIZE=str(WORLD), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    writes = []
    _count_writes(writes)
    images, _ = data()
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        est = simsiam(checkpoint=ckpt, checkpoint_every=1, verbose=1).fit(images)
    return est, {
        "writes": writes,
        "stderr": err.getvalue(),
        "group_left_open": torch.distributed.is_initialized(),
        "features": est.transform(images),
    }


class _Interrupt(Exception):
    pass


def _finetune_rank(rank, port, ckpt):
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    writes = []
    _count_writes(writes)
    images, y = data()
    step_seed = D.step_seed

    def stop_after_the_checkpoint(seed, rank, step):  # drawn before each step, on every rank
        if step == INTERRUPT_AT:  # rank 0 has just saved step INTERRUPT_AT's checkpoint
            raise _Interrupt
        return step_seed(seed, rank, step)

    D.step_seed = stop_after_the_checkpoint
    with pytest.raises(_Interrupt):
        finetune(checkpoint=ckpt, checkpoint_every=1).fit(images, y)
    D.step_seed = step_seed
    interrupted_writes = list(writes)
    est = finetune(checkpoint=ckpt, checkpoint_every=1).fit(images, y)  # resumes
    torch.distributed.destroy_process_group()
    return est, {
        "interrupted_writes": interrupted_writes,
        "writes": writes,
        "predictions": est.predict(images),
    }


def _semi_data():
    """``data()`` plus 10 unlabelled images (every target NaN)."""
    images, y = data()
    extra = np.random.default_rng(1).integers(0, 256, (10,) + images.shape[1:], dtype=np.uint8)
    return np.concatenate([images, extra]), y.reindex(range(len(images) + 10))


MEAN_TEACHER = dict(consistency_weight=1.0, unlabelled_batch_size=5)  # shards 3/2


def _mean_teacher_rank(rank, port, ckpt):
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD
    )
    images, y = _semi_data()
    est = finetune(**MEAN_TEACHER).fit(images, y)
    torch.distributed.destroy_process_group()
    return est, {}


def _run_rank(target, rank, port, ckpt, out):
    try:
        torch.set_num_threads(1)
        est, info = target(rank, port, ckpt)
        net = _network(est)
        info.update(
            state={k: v.clone() for k, v in net.state_dict().items()},
            history=est.history_.to_dict("list"),
            pickled=pickle.dumps(est),
            n_steps=est.n_steps_,
        )
        torch.save(info, f"{out}.{rank}")
    except BaseException:
        with open(f"{out}.{rank}.err", "w") as f:
            f.write(traceback.format_exc())
        os._exit(1)
    os._exit(0)


def _launch(target, tmp_path, timeout=60):
    """Fork ``WORLD`` ranks of ``target``; return their results, rank by rank."""
    port, ckpt, out = _free_port(), str(tmp_path / "fit.ckpt"), str(tmp_path / "rank")
    ctx = multiprocessing.get_context("fork")
    with warnings.catch_warnings():  # Python >= 3.12 warns on fork in a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        procs = [
            ctx.Process(target=_run_rank, args=(target, r, port, ckpt, out), daemon=True)
            for r in range(WORLD)
        ]
        for p in procs:
            p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():  # a rank waits forever for a collective the other never joins
            p.kill()
            p.join()
    errors = [Path(f"{out}.{r}.err") for r in range(WORLD)]
    errors = [e.read_text() for e in errors if e.exists()]
    assert not errors, "\n".join(errors)
    assert [p.exitcode for p in procs] == [0] * WORLD
    assert not os.path.exists(ckpt), "the checkpoint is deleted when the fit ends"
    return [torch.load(f"{out}.{r}", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread in the parent (as in the forked ranks) before anything forks."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _assert_ranks_identical(results):
    a, b = results
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    assert a["history"]["loss"] == b["history"]["loss"]


def _assert_close_to(single, result, kind):
    weights, loss = ATOL[kind]
    ref = _network(single).state_dict()
    assert ref.keys() == result["state"].keys()
    worst = max(float((ref[k].double() - result["state"][k].double()).abs().max()) for k in ref)
    assert worst <= weights, worst
    # losses may cross 0: an absolute tolerance
    np.testing.assert_allclose(single.history_["loss"], result["history"]["loss"], atol=loss)
    assert single.n_steps_ == result["n_steps"]


def _assert_plain(est):
    net = _network(pickle.loads(pickle.dumps(est)))
    kinds = {type(m).__name__ for m in net.modules()}
    assert not kinds & {"GlooSyncBatchNorm", "SyncBatchNorm", "DistributedDataParallel"}
    assert "BatchNorm2d" in kinds


def test_simsiam_on_two_ranks_matches_one_process_with_the_same_global_batch(tmp_path):
    results = _launch(_simsiam_rank, tmp_path)
    images, _ = data()
    single = simsiam().fit(images)
    _assert_ranks_identical(results)
    for r in results:
        _assert_close_to(single, r, "simsiam")
        _assert_plain(pickle.loads(r["pickled"]))
        assert not r["group_left_open"]  # initialised from the environment: destroyed
        # scoring sees every row once, on every rank: no padded duplicates
        assert r["features"].shape == (len(images), single.n_features_out_)
        np.testing.assert_allclose(r["features"], single.transform(images), atol=1e-3)
    rank0, rank1 = results
    assert rank0["writes"] and not rank1["writes"]  # only rank 0 writes the checkpoint
    assert "SimSiam epoch" in rank0["stderr"] and rank1["stderr"] == ""


def test_finetuning_on_two_ranks_resumes_and_matches_one_process(tmp_path):
    results = _launch(_finetune_rank, tmp_path)
    images, y = data()
    single = finetune().fit(images, y)
    _assert_ranks_identical(results)
    for r in results:
        _assert_close_to(single, r, "finetune")
        _assert_plain(pickle.loads(r["pickled"]))
        assert len(r["predictions"]) == len(images)
    rank0, rank1 = results
    # steps 1-4, the end of epoch 1, step 5; then the resumed fit's, all by rank 0
    assert len(rank0["interrupted_writes"]) == INTERRUPT_AT + 1
    assert len(rank0["writes"]) > INTERRUPT_AT + 1 and not rank1["writes"]


def test_mean_teacher_on_two_ranks_matches_one_process(tmp_path):
    """The unlabelled batch is drawn once for the group and sharded; the consistency term
    is weighted by each rank's share of it (uneven: 3/2), as the supervised one is."""
    results = _launch(_mean_teacher_rank, tmp_path)
    images, y = _semi_data()
    single = finetune(**MEAN_TEACHER).fit(images, y)
    _assert_ranks_identical(results)
    for r in results:
        _assert_close_to(single, r, "finetune")
    plain = finetune().fit(*data())  # the control: without the unlabelled images
    assert not np.allclose(plain.history_["loss"], single.history_["loss"], atol=1e-3)


def test_sharding_and_steps():
    idx = torch.arange(9)
    parts = [D.shard(D.Context(2, r), idx).tolist() for r in range(2)]
    assert parts == [[0, 1, 2, 3, 4], [5, 6, 7, 8]]  # contiguous, nothing padded or repeated
    assert D.shard(D.Context(), idx) is idx
    assert D.steps_per_epoch(24, 7, world=2) == 4
    # a last batch of 2 images: a step in one process, skipped on 4 ranks (one image each)
    assert D.steps_per_epoch(23, 7) == 4 and D.steps_per_epoch(23, 7, world=4) == 3
    assert D.loss_scale(D.Context(), 3, 7) is None
    assert D.loss_scale(D.Context(2, 1), 3, 7) == pytest.approx(6 / 7)
    seeds = {D.step_seed(0, r, s) for r in range(2) for s in range(50)}
    assert len(seeds) == 100


def test_a_single_process_fit_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with D.session("cpu") as ctx:
        assert not ctx.active and ctx.main and not torch.distributed.is_initialized()
