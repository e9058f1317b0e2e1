"""Tests of skddh.metrics._agreement: Gwet's AC1 (hand-worked cases; irrCAC where installed)."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import cohen_kappa_score

import skddh.metrics
from skddh.metrics import GwetAC1Result, gwet_ac1

# 12 hips, two readers, 0 = normal, 1 = cam: 10 agreements (9 normal, 1 cam).
READER_1 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0]
READER_2 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1]
TWELVE = np.column_stack([READER_1, READER_2])


def _table(counts):
    """Two-rater ratings from a 2x2 table {(rating_1, rating_2): count}."""
    rows = [pair for pair, c in counts.items() for _ in range(c)]
    return np.array(rows)


def test_exported():
    for name in ("GwetAC1Result", "gwet_ac1"):
        assert name in skddh.metrics.__all__


def test_two_by_two_by_hand():
    # 10 subjects: 6 both 0, 2 both 1, one (0, 1), one (1, 0).
    ratings = _table({(0, 0): 6, (1, 1): 2, (0, 1): 1, (1, 0): 1})
    res = gwet_ac1(ratings)
    assert isinstance(res, GwetAC1Result)
    p_a = 8 / 10
    pi1 = (2 * 2 + 1 + 1) / 20  # share of the 20 ratings that are 1: 0.3
    p_e = 2 * pi1 * (1 - pi1)  # sum_k pi_k (1 - pi_k) / (q - 1), q = 2: 0.42
    ac1 = (p_a - p_e) / (1 - p_e)  # 0.38 / 0.58
    assert res.p_a == pytest.approx(0.8)
    assert res.p_e == pytest.approx(0.42)
    assert res.coefficient == pytest.approx(ac1) == pytest.approx(0.6551724138)

    # Gwet's subject terms g_i, by subject type: p_a|i is 1 or 0, p_e|i = sum_k r_ik (1 -
    # pi_k) / r_i: 0.3 (both 0), 0.7 (both 1), 0.5 (split).
    def g(pa_i, pe_i):
        return (pa_i - p_e) / (1 - p_e) - 2 * (1 - ac1) * (pe_i - p_e) / (1 - p_e)

    terms = [g(1, 0.3)] * 6 + [g(1, 0.7)] * 2 + [g(0, 0.5)] * 2
    se = np.sqrt(sum((t - ac1) ** 2 for t in terms) / (10 * 9))
    assert res.standard_error == pytest.approx(se)
    t = stats.t.ppf(0.975, 9)
    assert res.confidence_interval == pytest.approx((ac1 - t * se, min(1.0, ac1 + t * se)))
    assert res.p_value == pytest.approx(2 * stats.t.sf(ac1 / se, 9))
    assert (res.n_subjects, res.n_subjects_paired, res.n_raters) == (10, 10, 2)
    assert res.categories == (0, 1)
    assert res.confidence_level == 0.95
    # Cohen's kappa on the same table: chance agreement 0.7**2 + 0.3**2 = 0.58.
    assert cohen_kappa_score(ratings[:, 0], ratings[:, 1]) == pytest.approx(0.22 / 0.42)


def test_kappa_paradox_twelve_hips():
    # The worked example: kappa 0.40 although the readers agree on 10 of 12 hips.
    res = gwet_ac1(TWELVE)
    assert cohen_kappa_score(READER_1, READER_2) == pytest.approx(0.4)
    assert res.coefficient == pytest.approx(10 / 13)  # 0.76923
    assert res.p_a == pytest.approx(10 / 12)
    assert res.p_e == pytest.approx(5 / 18)  # pi = (5/6, 1/6): 2 * 5/36
    assert res.confidence_interval[1] == 1.0  # clipped, as Gwet does
    assert res.confidence_interval[0] == pytest.approx(0.3769282518)


def test_kappa_paradox_rare_finding():
    # 100 hips, 90 agreed normal, 10 disagreements, no agreed finding: kappa < 0, AC1 high.
    ratings = _table({(0, 0): 90, (0, 1): 5, (1, 0): 5})
    kappa = cohen_kappa_score(ratings[:, 0], ratings[:, 1])
    res = gwet_ac1(ratings)
    assert kappa < 0
    assert res.coefficient > 0.85
    assert res.coefficient == pytest.approx((0.9 - 2 * 0.05 * 0.95) / (1 - 2 * 0.05 * 0.95))


def test_perfect_agreement_is_one():
    ratings = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 2], [1, 1, 1], [0, 0, 0]])
    res = gwet_ac1(ratings)
    assert res.coefficient == 1.0 and res.p_a == 1.0
    assert res.standard_error == pytest.approx(0.0, abs=1e-12)
    assert res.confidence_interval == pytest.approx((1.0, 1.0))


def test_one_category_used_needs_categories():
    ratings = np.zeros((5, 2), dtype=int)
    with pytest.raises(ValueError, match="categories"):
        gwet_ac1(ratings)
    res = gwet_ac1(ratings, categories=[0, 1])
    # pi = (1, 0): p_e = 0, so AC1 = p_a = 1.
    assert res.coefficient == 1.0 and res.p_e == 0.0 and res.categories == (0, 1)


def test_unused_category_changes_q():
    ratings = _table({(0, 0): 6, (1, 1): 2, (0, 1): 1, (1, 0): 1})
    res = gwet_ac1(ratings, categories=[0, 1, 2])
    # pi = (0.7, 0.3, 0): p_e = (0.21 + 0.21) / (3 - 1).
    assert res.p_e == pytest.approx(0.21)
    assert res.coefficient == pytest.approx((0.8 - 0.21) / 0.79)
    assert res.categories == (0, 1, 2)


def test_missing_ratings_by_hand():
    # Subject 3 has one rating: it enters pi but not p_a; subject 4 has none: dropped.
    ratings = [[0, 0, np.nan], [1, 1, 0], [1, None, np.nan], [np.nan, np.nan, np.nan]]
    res = gwet_ac1(ratings)
    assert (res.n_subjects, res.n_subjects_paired, res.n_raters) == (3, 2, 3)
    p_a = (1 + (2 * 1) / (3 * 2)) / 2  # subject 1: 1 pair agrees of 1; subject 2: 1 of 3
    pi1 = (0 + 2 / 3 + 1) / 3
    p_e = 2 * pi1 * (1 - pi1)
    assert res.p_a == pytest.approx(p_a)
    assert res.p_e == pytest.approx(p_e)
    assert res.coefficient == pytest.approx((p_a - p_e) / (1 - p_e))
    # An all-missing row changes nothing.
    assert gwet_ac1(ratings[:3]) == res


def test_input_forms_agree():
    rng = np.random.default_rng(0)
    ratings = rng.integers(0, 3, size=(30, 3)).astype(float)
    ratings[rng.random(ratings.shape) < 0.2] = np.nan
    ref = gwet_ac1(ratings)
    names = np.array(["normal", "cam", "pincer"], dtype=object)
    as_text = np.where(np.isnan(ratings), None, names[np.nan_to_num(ratings).astype(int)])
    frame = pd.DataFrame(ratings, columns=["a", "b", "c"]).astype("Int64")  # pd.NA
    for other in (gwet_ac1(as_text), gwet_ac1(frame), gwet_ac1(ratings[:, ::-1])):
        assert other.coefficient == pytest.approx(ref.coefficient)
        assert other.standard_error == pytest.approx(ref.standard_error)
    shuffled = gwet_ac1(ratings[rng.permutation(30)])
    assert shuffled.coefficient == pytest.approx(ref.coefficient)
    assert gwet_ac1(as_text).categories == ("cam", "normal", "pincer")  # sorted


def test_confidence_level_widens_interval():
    ratings = _table({(0, 0): 6, (1, 1): 2, (0, 1): 1, (1, 0): 1})
    lo90, hi90 = gwet_ac1(ratings, confidence_level=0.90).confidence_interval
    lo99, hi99 = gwet_ac1(ratings, confidence_level=0.99).confidence_interval
    assert lo99 < lo90 and hi99 >= hi90


def test_result_is_frozen():
    res = gwet_ac1(TWELVE)
    with pytest.raises(AttributeError):
        res.coefficient = 0.0


@pytest.mark.parametrize(
    ("ratings", "kwargs", "match"),
    [
        (np.zeros((5, 1)), {}, "at least 2 raters"),
        (np.zeros(5), {}, "2-D"),
        ([[0, np.nan], [np.nan, 1], [1, np.nan]], {}, "rated by 2 or more"),
        ([[0, 1], [1, 2]], {"categories": [0, 1]}, r"2 .*subject 1, rater 1.*categories"),
        ([[0, 0], [0, 0]], {}, "at least 2 categories"),
        ([[0, 1], [1, 1]], {"categories": [0]}, "at least 2 categories"),
        ([[0, 1], [1, 1]], {"categories": [0, 1, 1]}, "distinct"),
        ([[0, 1], [1, 1]], {"categories": [0, np.nan]}, "missing"),
        ([[0, 1], [1, 1]], {"confidence_level": 1.0}, "confidence_level"),
    ],
)
def test_errors_name_the_argument(ratings, kwargs, match):
    with pytest.raises(ValueError, match=match):
        gwet_ac1(ratings, **kwargs)


def test_single_subject_has_no_standard_error():
    res = gwet_ac1([[0, 1]], categories=[0, 1])
    assert np.isnan(res.standard_error) and np.isnan(res.confidence_interval[0])


# --- cross-check against irrCAC (GPL: a test-time reference only, never imported by skddh) ---


def _random_table(seed, n, raters, q, missing):
    """Ratings with a shared latent category per subject, some raters off, some cells NaN."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, q, n)
    noisy = rng.random((n, raters)) < 0.3
    ratings = np.where(noisy, rng.integers(0, q, (n, raters)), truth[:, None]).astype(float)
    ratings[rng.random((n, raters)) < missing] = np.nan
    return pd.DataFrame(ratings, columns=[f"rater{j}" for j in range(raters)])


TABLES = {
    "twelve_hips": (pd.DataFrame(TWELVE.astype(float), columns=["r1", "r2"]), None),
    "2r_2c": (_random_table(1, 30, 2, 2, 0.0), None),
    "2r_3c_missing": (_random_table(2, 25, 2, 3, 0.15), None),
    "3r_2c_missing": (_random_table(3, 40, 3, 2, 0.3), None),
    "3r_3c_missing": (_random_table(4, 35, 3, 3, 0.2), None),
    "4r_4c_missing": (_random_table(5, 50, 4, 4, 0.25), None),
    "4r_3c_unused_category": (_random_table(6, 20, 4, 3, 0.1), [0.0, 1.0, 2.0, 3.0]),
}


@pytest.mark.filterwarnings("ignore::pandas.errors.SettingWithCopyWarning")  # irrCAC's own
@pytest.mark.parametrize("level", [0.95, 0.90])
@pytest.mark.parametrize("name", list(TABLES))
def test_matches_irrcac(name, level):
    irr = pytest.importorskip("irrCAC.raw")
    ratings, categories = TABLES[name]
    ref = irr.CAC(ratings, categories=categories, confidence_level=level, digits=12).gwet()
    est = ref["est"]
    res = gwet_ac1(ratings, categories=categories, confidence_level=level)
    assert res.coefficient == pytest.approx(est["coefficient_value"], abs=1e-6)
    assert res.standard_error == pytest.approx(est["se"], abs=1e-6)
    assert res.confidence_interval == pytest.approx(est["confidence_interval"], abs=1e-6)
    assert res.p_a == pytest.approx(est["pa"], abs=1e-6)
    assert res.p_e == pytest.approx(est["pe"], abs=1e-6)
    assert res.p_value == pytest.approx(est["p_value"], abs=1e-6)
    assert list(res.categories) == list(ref["categories"])


def test_irrcac_example_with_missing():
    # irrCAC's own 4-rater, 5-category example with missing cells: AC1 0.77544.
    datasets = pytest.importorskip("irrCAC.datasets")
    res = gwet_ac1(datasets.raw_4raters())
    assert res.coefficient == pytest.approx(0.77544, abs=5e-6)
    assert res.standard_error == pytest.approx(0.14295, abs=5e-6)
    assert res.confidence_interval[0] == pytest.approx(0.46081, abs=5e-6)
    assert (res.n_subjects, res.n_subjects_paired) == (12, 11)


def test_package_does_not_import_irrcac():
    import ast
    import pathlib

    root = pathlib.Path(skddh.metrics.__file__).parents[1]
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mods = [node.module or ""]
            else:
                continue
            assert not any(m.split(".")[0].lower() == "irrcac" for m in mods), path
