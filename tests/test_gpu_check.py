"""``make gpu-check`` (benchmarks/gpu_check.py) on a machine without CUDA, and its parsers."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_without_cuda_it_says_so_in_one_line_and_exits_2():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2, run.stderr
    assert run.stdout.strip().splitlines() == [
        "gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing run."
    ]
    assert "Traceback" not in run.stderr


def test_parsers_read_the_figures_of_the_steps():
    mod = _module()
    bench = (
        "| px  | fit ours img/s | (a) lightly img/s | ours/(a) | (b) ceiling img/s | ours/(b) "
        "| transform img/s | plain timm img/s | ratio |\n"
        "| 224 |          6,912 |             2,568 |     2.69 |             7,100 |     0.97 "
        "|          41,250 |           52,000 |  0.79 |\n"
        "| 128 |         15,000 |      (no lightly) |        - |            16,000 |     0.94 "
        "|          90,000 |          100,000 |  0.90 |\n"
    )
    assert mod.parse_bench(bench) == (6912.0, 41250.0)
    assert mod.parse_bench("no table") == (None, None)
    assert mod.parse_pytest("x\n==== 7 passed, 2 warnings in 95.20s (0:01:35) ====") == (
        "7 passed, 2 warnings"
    )
    text = mod.table([("pytest -m gpu", "ok", 95.2, "7 passed", "all pass")])
    assert text.splitlines()[2].startswith("| pytest -m gpu | ok ")
