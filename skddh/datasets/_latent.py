"""Latent clinical model of the synthetic cohort: who the infants are and what their hips measure.

Everything here is tables of numbers; nothing is drawn as an image. The images are drawn *from*
these numbers by :mod:`skddh.datasets._us_phantom` and :mod:`skddh.datasets._xr_phantom`.
The values come from the published sources cited beside them; those that are assumptions are
parameters of :func:`make_hip_cohort`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

#: Order of the per-hip latent measurements in the copula.
LATENT_NAMES = ("alpha", "beta", "fhc", "ai", "ce")

#: Correlation matrix R of the Gaussian copula over (alpha, beta, FHC, AI, CE), DOMAIN.md 7.2.
#: alpha-FHC 0.73 is from the Oxford NDORMS data; every other entry is an assumption.
DEFAULT_CORRELATION = np.array(
    [
        [1.00, -0.60, 0.73, -0.45, 0.40],
        [-0.60, 1.00, -0.50, 0.35, -0.35],
        [0.73, -0.50, 1.00, -0.55, 0.50],
        [-0.45, 0.35, -0.55, 1.00, -0.60],
        [0.40, -0.35, 0.50, -0.60, 1.00],
    ]
)


@dataclass(frozen=True)
class Mixture:
    """A clipped Gaussian mixture used as a marginal of the copula."""

    weights: tuple[float, ...]
    means: tuple[float, ...]
    sds: tuple[float, ...]
    low: float
    high: float
    tail: tuple[bool, ...] = field(default=())

    def with_tail_factor(self, factor: float) -> Mixture:
        """Return the mixture with its tail components' weights multiplied by ``factor``."""
        w = np.asarray(self.weights, dtype=float)
        tail = np.asarray(self.tail or (False,) + (True,) * (len(w) - 1))
        w = np.where(tail, w * factor, w)
        w = w / w.sum()
        return Mixture(tuple(w), self.means, self.sds, self.low, self.high, self.tail)

    def ppf(self, u: np.ndarray) -> np.ndarray:
        """Inverse CDF by interpolation on a fine grid (the mixture has no closed form)."""
        grid = np.linspace(self.low, self.high, 4097)
        cdf = np.zeros_like(grid)
        for w, m, s in zip(self.weights, self.means, self.sds):
            cdf += w * stats.norm.cdf(grid, m, s)
        # mass below `low` and above `high` is clipped onto the ends, as the spec's "clipped" says
        return np.interp(u, cdf, grid)


#: Marginals per preset (DOMAIN.md 7.2). Only alpha differs between presets.
PRESETS: dict[str, dict[str, Mixture]] = {}
_COMMON = {
    "beta": Mixture((0.93, 0.07), (55.0, 82.0), (6.0, 8.0), 35.0, 110.0),
    "fhc": Mixture((0.93, 0.07), (0.56, 0.33), (0.055, 0.09), 0.0, 0.85),
    "ai": Mixture((0.93, 0.07), (22.0, 32.0), (4.0, 5.0), 8.0, 50.0),
    "ce": Mixture((0.93, 0.07), (22.0, 6.0), (6.0, 10.0), -30.0, 45.0),
}
PRESETS["registry"] = {
    "alpha": Mixture((0.78, 0.15, 0.07), (64.0, 54.5, 44.0), (3.6, 2.8, 5.5), 25.0, 80.0),
    **_COMMON,
}
PRESETS["screening"] = {
    "alpha": Mixture((0.95, 0.044, 0.006), (65.0, 55.5, 45.0), (3.4, 2.6, 5.0), 25.0, 80.0),
    **_COMMON,
}

#: Subject-level demographics per preset (DOMAIN.md 7.1).
DEMOGRAPHICS = {
    "registry": {"female": 0.7, "breech": 0.2, "family_history": 0.25},
    "screening": {"female": 0.5, "breech": 0.05, "family_history": 0.1},
}

#: Rater noise SDs per label-noise preset (DOMAIN.md 6.3 and 7.5); fhc in fraction units.
RATER_NOISE = {
    "none": {"alpha": 0.0, "beta": 0.0, "fhc": 0.0, "ai": 0.0, "ce": 0.0, "bias": 0.0, "flip": 0.0},
    "clinical": {
        "alpha": 2.2,
        "beta": 4.3,
        "fhc": 0.045,
        "ai": 2.0,
        "ce": 3.0,
        "bias": 1.0,
        "flip": 0.05,
    },
    "hard": {
        "alpha": 3.0,
        "beta": 6.0,
        "fhc": 0.06,
        "ai": 2.5,
        "ce": 4.0,
        "bias": 1.0,
        "flip": 0.08,
    },
}


def check_correlation(correlation: np.ndarray) -> np.ndarray:
    """Validate a 5x5 copula correlation matrix (symmetric, unit diagonal, positive-definite)."""
    r = np.asarray(correlation, dtype=float)
    if r.shape != (5, 5):
        raise ValueError(
            f"correlation must be a 5x5 matrix over {LATENT_NAMES}, got shape {r.shape}."
        )
    if not np.allclose(r, r.T) or not np.allclose(np.diag(r), 1.0):
        raise ValueError("correlation must be symmetric with a unit diagonal.")
    if np.linalg.eigvalsh(r).min() <= 0:
        raise ValueError("correlation must be positive-definite.")
    return r


def draw_subjects(n: int, preset: str, rng: np.random.Generator) -> pd.DataFrame:
    """Draw the subject table: sex, ages at ultrasound and X-ray, risk flags."""
    demo = DEMOGRAPHICS[preset]
    female = rng.random(n) < demo["female"]
    if preset == "registry":
        age_us_weeks = rng.uniform(2.0, 16.0, n)
    else:
        age_us_weeks = np.clip(rng.normal(6.0, 2.0, n), 0.5, 14.0)
    # X-ray at 3-8 months, most at 4-6 (DOMAIN.md 7.1)
    age_xr_months = rng.triangular(3.0, 5.0, 8.0, n)
    return pd.DataFrame(
        {
            "subject": [f"S{i:05d}" for i in range(n)],
            "sex": np.where(female, "F", "M"),
            "age_us_weeks": age_us_weeks,
            "age_xr_months": age_xr_months,
            "breech": rng.random(n) < demo["breech"],
            "family_history": rng.random(n) < demo["family_history"],
        }
    )


def draw_hips(
    subjects: pd.DataFrame,
    preset: str,
    rng: np.random.Generator,
    *,
    correlation: np.ndarray,
    lr_correlation: float,
    tail_factor: float = 1.5,
) -> pd.DataFrame:
    """Draw the per-hip latent measurements for both hips of every subject.

    A Gaussian copula with covariance ``[[R, rho R], [rho R, R]]`` over (right, left) is mapped
    through the preset's mixture marginals; side and sex shifts act on the copula scale, age
    effects on the measurement scale. Decentred hips are made consistent (FHC <= 0.35,
    beta >= 77) and get a target IHDI grade, realised later by the X-ray geometry.
    """
    n = len(subjects)
    r = correlation
    cov = np.block([[r, lr_correlation * r], [lr_correlation * r, r]])
    z = rng.multivariate_normal(np.zeros(10), cov, size=n, method="cholesky")
    z = z.reshape(n, 2, 5)  # (subject, side [R, L], measurement)
    female = (subjects["sex"].to_numpy() == "F")[:, None]
    # Left hip 0.2 SD below the right on alpha/FHC (Liu 2022; Kang & Koo 2017); females
    # 0.35 SD below males on alpha. The shifts are centred on the preset's population, so the
    # population marginal stays the preset's mixture (DOMAIN.md 7.2) and only contrasts move.
    z[:, 0, [0, 2]] += 0.1
    z[:, 1, [0, 2]] -= 0.1
    z[:, :, 0] -= 0.35 * (female - DEMOGRAPHICS[preset]["female"])
    u = stats.norm.cdf(z)
    flagged = (subjects["breech"] | subjects["family_history"]).to_numpy()
    # Risk flags raise the tail weight; unflagged subjects get less, so that the mixture's
    # weights hold on average over the preset's flag prevalence.
    demo = DEMOGRAPHICS[preset]
    p_flag = 1 - (1 - demo["breech"]) * (1 - demo["family_history"])
    plain_factor = max(0.0, (1 - tail_factor * p_flag) / (1 - p_flag))

    marg = PRESETS[preset]
    values = np.empty_like(u)
    for j, name in enumerate(LATENT_NAMES):
        plain = marg[name].with_tail_factor(plain_factor)
        risky = marg[name].with_tail_factor(tail_factor)
        values[:, :, j] = np.where(flagged[:, None], risky.ppf(u[:, :, j]), plain.ppf(u[:, :, j]))

    # Age effects relative to ~6 weeks (US) over 0-4 months (Liu 2022 monthly means).
    months = np.minimum(subjects["age_us_weeks"].to_numpy() / 4.345, 4.0)[:, None] - 1.4
    values[:, :, 0] = np.clip(values[:, :, 0] + 0.8 * months, 25.0, 80.0)
    values[:, :, 1] = np.clip(values[:, :, 1] - 1.3 * months, 35.0, 110.0)
    values[:, :, 2] = np.clip(values[:, :, 2] + 0.012 * months, 0.0, 0.85)
    # The osseous AI falls with age (Sari: r ~ -0.25); assumption: -0.8 deg/month around 5 months.
    xr_months = subjects["age_xr_months"].to_numpy()[:, None] - 5.0
    values[:, :, 3] = np.clip(values[:, :, 3] - 0.8 * xr_months, 8.0, 50.0)

    hips = pd.DataFrame(
        {
            "subject": np.repeat(subjects["subject"].to_numpy(), 2),
            "side": np.tile(["R", "L"], n),
            **{name: values[:, :, j].ravel() for j, name in enumerate(LATENT_NAMES)},
        }
    )
    alpha = hips["alpha"].to_numpy()
    decentred = alpha < 43.0
    hips.loc[decentred, "fhc"] = np.minimum(hips.loc[decentred, "fhc"], 0.35)
    hips.loc[decentred, "beta"] = np.maximum(hips.loc[decentred, "beta"], 77.0)
    hips["decentred"] = decentred

    # Target IHDI grade: decentred -> II/III/IV (0.4/0.4/0.2); IIc/D -> II with P 0.2.
    target = np.ones(len(hips), dtype=int)
    target[decentred] = rng.choice([2, 3, 4], size=decentred.sum(), p=[0.4, 0.4, 0.2])
    critical = (alpha >= 43.0) & (alpha < 50.0)
    target[critical & (rng.random(len(hips)) < 0.2)] = 2
    hips["ihdi_target"] = target
    age_weeks = np.repeat(subjects["age_us_weeks"].to_numpy(), 2)
    hips["graf_type"] = graf_type(hips["alpha"], hips["beta"], age_weeks, target)
    hips["hip_id"] = [f"{s}{side}" for s, side in zip(hips["subject"], hips["side"])]
    return hips


def graf_type(alpha, beta, age_weeks, ihdi_target=None) -> np.ndarray:
    """Graf type from alpha, beta and age (the Graf type table of the docs' glossary).

    III and IV are told apart by the severity of the decentring (IHDI IV -> Graf IV), since
    the phantom does not model the direction the cartilage roof is pushed.
    """
    alpha = np.asarray(alpha, dtype=float)
    beta = np.asarray(beta, dtype=float)
    age_weeks = np.asarray(age_weeks, dtype=float)
    severe = np.zeros(alpha.shape, bool) if ihdi_target is None else np.asarray(ihdi_target) >= 4
    return np.select(
        [
            (alpha >= 60) & (beta <= 55),
            alpha >= 60,
            (alpha >= 50) & (age_weeks < 12),
            alpha >= 50,
            (alpha >= 43) & (beta <= 77),
            alpha >= 43,
            ~severe,
        ],
        ["Ia", "Ib", "IIa", "IIb", "IIc", "D", "III"],
        default="IV",
    )


def rate(
    values: pd.DataFrame,
    *,
    noise: str,
    n_raters: int,
    rng: np.random.Generator,
    subject: np.ndarray,
    integer_columns: tuple[str, ...] = (),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Simulate ``n_raters`` readings of each image and return (consensus, long ratings).

    Each rater has a fixed bias per measurement (N(0, 1) deg, or pp for coverage) and
    independent per-reading noise with the preset's SD. Grades flip to an adjacent grade with
    the preset's probability. The consensus is the mean reading; for grades the higher
    (more conservative) of the middle readings.
    """
    sd = RATER_NOISE[noise]
    readings = {}
    for k in range(n_raters):
        read = {}
        for col in values.columns:
            v = values[col].to_numpy()
            if col in integer_columns:
                flip = rng.random(len(v)) < sd["flip"]
                step = rng.choice([-1, 1], size=len(v))
                read[col] = np.where(flip, np.clip(v + step, 1, 4), v).astype(int)
            else:
                scale = 0.01 if col == "fhc" else 1.0
                bias = rng.normal(0.0, sd["bias"] * scale)
                read[col] = v + bias + rng.normal(0.0, sd.get(col, 0.0), len(v))
        readings[k] = pd.DataFrame(read, index=values.index)
    stacked = np.stack([readings[k].to_numpy(float) for k in range(n_raters)])
    consensus = pd.DataFrame(stacked.mean(axis=0), columns=values.columns, index=values.index)
    for col in integer_columns:
        j = values.columns.get_loc(col)
        consensus[col] = np.ceil(np.median(stacked[:, :, j], axis=0)).astype(int)
    long = pd.concat(
        [
            readings[k]
            .assign(image_index=np.arange(len(values)), subject=subject, rater=k)
            .melt(id_vars=["image_index", "subject", "rater"], var_name="measurement")
            for k in range(n_raters)
        ],
        ignore_index=True,
    )
    return consensus, long
