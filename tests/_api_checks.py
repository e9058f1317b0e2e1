"""The scikit-learn API checks that need no tabular data, for estimators that take images.

scikit-learn's common checks feed 2-D tables and skip an estimator whose tags say it takes
no 2-D input; these data-free checks apply as they are (the data-dependent contract of each
image estimator is tested with images in its own test file).
"""

from sklearn.utils import estimator_checks as ec

DATA_FREE_CHECKS = [
    ec.check_no_attributes_set_in_init,
    ec.check_get_params_invariance,
    ec.check_set_params,
    ec.check_parameters_default_constructible,
    ec.check_estimator_repr,
    ec.check_estimator_cloneable,
    ec.check_estimator_tags_renamed,
    ec.check_valid_tag_types,
    ec.check_do_not_raise_errors_in_init_or_set_params,
]
