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
