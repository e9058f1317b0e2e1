"""Does the GPU path work, and is it as fast as issue 15 asks? One command, one table.

On a machine with CUDA (``make gpu-check``), in order, each timed:

1. ``pytest -m gpu``: the tests in ``tests/test_gpu.py`` (device residency, pinned batches,
   bf16, channels_last, ``compile=True``, a real out-of-memory back-off, a CUDA-fitted model
   pickled and loaded without CUDA);
2. ``benchmarks/bench_simsiam.py --device cuda``: SimSiam fit and transform images/s at
   224 px with ResNet-18 (targets: fit >= 6,500 img/s, transform >= 40,000 img/s);
3. ``skddh reproduce --scale paper --device cuda``: the paper's study end to end (target:
   under 10 minutes).

Then one table: step, status, seconds, the key figure and its target. Exit status 0 when
every step passed and met its target, 1 otherwise, 2 when there is no CUDA device (one line
says so; nothing is run). Each step's full output is kept in ``--out`` (a temporary
directory by default).

    python benchmarks/gpu_check.py                    # everything
    python benchmarks/gpu_check.py --skip study       # tests and benchmark only
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIT_TARGET = 6_500  # img/s, SimSiam fit at 224 px, ResNet-18, one H100
TRANSFORM_TARGET = 40_000  # img/s, transform at 224 px
STUDY_TARGET_S = 600  # skddh reproduce --scale paper, end to end


def _cuda_device() -> str | None:
    """The CUDA device's name, or None (torch missing or no usable device).

    Answered without importing torch (seconds) when no device can be there: none made
    visible (``CUDA_VISIBLE_DEVICES`` empty or -1), or Linux without NVIDIA's device nodes.
    """
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return None
    nodes = (Path("/dev/nvidiactl"), Path("/dev/dxg"))  # the driver's; WSL's
    if sys.platform == "linux" and not any(node.exists() for node in nodes):
        return None
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        return torch.cuda.get_device_name(0)
    except RuntimeError:  # a driver that is there but cannot start
        return None


def _run(name: str, cmd: list[str], out: Path, timeout: float) -> tuple[int | None, float, str]:
    """Run ``cmd`` from the repository root; its output goes to ``out/name.log`` (and is
    returned). The exit status is None when it ran past ``timeout`` seconds."""
    log = out / f"{name}.log"
    print(f"[gpu-check] {name}: {' '.join(cmd)}  (log: {log})", flush=True)
    t0 = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
        )
        rc, text = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, partial = None, exc.stdout or ""
        text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
    secs = time.perf_counter() - t0
    log.write_text(text)
    return rc, secs, text


def parse_pytest(text: str) -> str:
    """``"12 passed, 1 skipped"`` from pytest's summary line (or ``"-"``).

    >>> parse_pytest("... \\n===== 6 passed, 1 skipped in 80.1s =====\\n")
    '6 passed, 1 skipped'
    """
    found = re.findall(r"=+ (.*?) in [\d.]+s", text)
    return found[-1] if found else "-"


def parse_bench(text: str, size: int = 224) -> tuple[float | None, float | None]:
    """Fit and transform images/s at ``size`` px from bench_simsiam.py's table.

    Its rows read ``| px | fit ours | (a) lightly | ours/(a) | (b) ceiling | ours/(b) |
    transform | plain timm | ratio |``.

    >>> row = "| 224 |          6,912 | (no lightly) | - | 7,100 | 0.97 | 41,250 | 52,000 | 0.79 |"
    >>> parse_bench(row)
    (6912.0, 41250.0)
    """
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 9 and cells[0] == str(size):
            try:
                return float(cells[1].replace(",", "")), float(cells[6].replace(",", ""))
            except ValueError:
                return None, None
    return None, None


def _status(rc: int | None, ok: bool) -> str:
    if rc is None:
        return "TIMEOUT"
    if rc != 0:
        return f"FAIL (exit {rc})"
    return "ok" if ok else "below target"


def table(rows: list[tuple[str, str, float, str, str]]) -> str:
    """The rows as one Markdown table."""
    head = ("step", "status", "seconds", "key figure", "target")
    cols = list(zip(head, *rows))
    width = [max(len(str(c)) for c in col) for col in cols]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, width)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in width) + "|")
    for row in rows:
        cells = [row[0], row[1], f"{row[2]:.0f}", row[3], row[4]]
        lines.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, width)) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the checks; the exit status (0 all good, 1 a failure or a missed target, 2 no
    CUDA)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--skip", nargs="+", default=[], choices=["tests", "bench", "study"], help="steps to skip"
    )
    ap.add_argument("--out", type=Path, default=None, help="logs and the study's output")
    ap.add_argument(
        "--timeout", type=float, default=3600, help="seconds per step before it is stopped"
    )
    args = ap.parse_args(argv)
    name = _cuda_device()
    if name is None:
        print("gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing run.")
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="skddh-gpu-check-"))
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    rows = []
    if "tests" not in args.skip:
        cmd = [py, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider"]
        rc, secs, text = _run("tests", cmd, out, args.timeout)
        summary = parse_pytest(text)
        ok = "failed" not in summary and "error" not in summary and "passed" in summary
        rows.append(("pytest -m gpu", _status(rc, ok), secs, summary, "all pass"))
    if "bench" not in args.skip:
        cmd = [py, "benchmarks/bench_simsiam.py", "--device", "cuda"]
        rc, secs, text = _run("bench", cmd, out, args.timeout)
        fit, transform = parse_bench(text)
        for label, value, target in (
            ("SimSiam fit 224 px", fit, FIT_TARGET),
            ("transform 224 px", transform, TRANSFORM_TARGET),
        ):
            figure = "-" if value is None else f"{value:,.0f} img/s"
            ok = value is not None and value >= target
            rows.append((label, _status(rc, ok), secs, figure, f">= {target:,} img/s"))
    if "study" not in args.skip:
        study = out / "study"
        cmd = [py, "-m", "skddh", "reproduce", "--scale", "paper", "--device", "cuda"]
        rc, secs, text = _run("study", [*cmd, "--out", str(study)], out, args.timeout)
        ok = secs < STUDY_TARGET_S
        figure = f"{secs / 60:.1f} min"
        rows.append(("reproduce --scale paper", _status(rc, ok), secs, figure, "< 10 min"))
    print(f"\ngpu-check on {name}; logs in {out}\n")
    print(table(rows))
    return 0 if all(r[1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
