import numpy as np
import pytest

from skddh.datasets import make_hip_cohort


@pytest.fixture(scope="session")
def paper_cohort():
    """The default cohort: the paper's study shape (75 subjects, 128 px)."""
    return make_hip_cohort(random_state=0)


@pytest.fixture(scope="session")
def small_cohort():
    return make_hip_cohort(
        n_subjects=12, image_size=32, n_registry_us=200, n_registry_xr=64, random_state=1
    )


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def _fake_study_result(seed=0, shift=0.0, scale="tiny", device="cpu"):
    """A StudyResult with every table of a real run, its numbers ``shift``-ed, made in
    milliseconds (a real tiny run_study takes minutes on a shared 2-core machine)."""
    import pandas as pd

    from skddh.studies.ddh import DELTAS, PAPER, POLICY_GRID, StudyResult
    from skddh.studies.headline import headline_table, policy_key

    n = 20
    rng = np.random.default_rng(seed)
    alpha_true = np.linspace(50, 75, n)
    coverage_true = np.linspace(40, 70, n)[::-1]
    abnormal = rng.random(n) < 0.2
    passed = {}
    policy_rows = []
    for i, (rule, d_a, d_c) in enumerate(POLICY_GRID):
        p = np.arange(n) < (i + seed) % n
        passed[policy_key(rule, d_a, d_c)] = p
        policy_rows.append(
            dict(
                rule=rule,
                delta_alpha=d_a,
                delta_coverage=d_c,
                us_pass_rate=float(p.mean()),
                xray_rate=1 - float(p.mean()),
                missed_xray_finding=float((p & abnormal).mean()),
                missed_us_truth=0.01 * i + shift,
                coverage_alpha=0.9 + shift,
                coverage_coverage=0.8,
                paper_us_pass_rate=PAPER["policy"].get((rule, d_a)) if d_a == d_c else None,
            )
        )
    mae = pd.DataFrame(
        {
            "modality": ["ultrasound"] * 3 + ["x-ray"] * 2,
            "measurement": ["alpha", "beta", "coverage", "ai", "ce"],
            "mae": np.arange(1.0, 6.0) + shift,
            "mae_median_predictor": np.arange(2.0, 7.0),
            "paper_mae": [PAPER["mae"][m] for m in ["alpha", "beta", "coverage", "ai", "ce"]],
            "n": 40,
        }
    )
    mae.attrs["ihdi_accuracy"] = 0.5 + shift
    names = ["alpha", "beta", "coverage"]
    radii = pd.DataFrame(
        {
            "q_plus": pd.Series([10.0 + shift, 11.0, 20.0], index=names),
            "paper_q_plus": pd.Series(PAPER["radius_0.10"]),
        }
    ).loc[names]
    radii_by_delta = pd.DataFrame(
        [[30 - 10 * d + shift, 20 - d, 10 - d] for d in DELTAS],
        index=pd.Index(DELTAS, name="delta"),
        columns=names,
    )
    cov = pd.DataFrame(
        {"nominal": 1 - np.array(DELTAS), "alpha": 1 - np.array(DELTAS) + shift, "beta": 0.9},
        index=pd.Index(DELTAS, name="delta"),
    )
    methods = pd.DataFrame(
        {
            "method": ["paper", "exact"],
            "calibration_units": ["22 images (7 subjects)", "7 subjects"],
            "n_units": [22, 7],
            "q_plus_alpha": [10.0 + shift, np.inf],
            "q_plus_coverage": [20.0, np.inf],
            "coverage_alpha": [0.9, 1.0],
            "coverage_coverage": [0.9, 1.0],
            "subject_coverage_alpha": [0.8, 1.0],
            "subject_coverage_coverage": [0.8, 1.0],
            "alpha_pass_rate": [0.3 + shift, 0.0],
            "missed_alpha_below_60": [0.05, 0.0],
            "missed_xray_finding": [0.02, 0.0],
            "oracle_pass_rate": [0.6, 0.6],
            "guarantee": ["approximate", "exact"],
        }
    ).set_index("method")
    methods.attrs.update(delta=0.10, n_test_images=40, n_pairs=n, n_test_subjects=8)
    return StudyResult(
        scale=scale,
        device=device,
        seed=seed,
        mae=mae,
        radii=radii,
        radii_by_delta=radii_by_delta,
        coverage=cov,
        policy=pd.DataFrame(policy_rows),
        n_pairs=n,
        n_calibration=22,
        timings={"cohort": 1.0 + seed, "evaluation": 0.5},
        passed=passed,
        abnormal=abnormal,
        calibration_methods=methods,
        n_calibration_subjects=7,
        headline=headline_table(passed, alpha_true, coverage_true),
    )


@pytest.fixture
def fake_study_result():
    """A factory of StudyResults with every table: ``fake_study_result(seed, shift=...)``."""
    return _fake_study_result
