"""Flattened trees give exactly what scikit-learn's predict gives, missing values included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.ensemble import HistGradientBoostingRegressor, RandomForestRegressor

from scalable.advising.fast_predict import flatten


@pytest.mark.parametrize(
    "model",
    [
        HistGradientBoostingRegressor(max_iter=30, random_state=0),
        HistGradientBoostingRegressor(max_iter=20, loss="absolute_error", random_state=0),
        RandomForestRegressor(n_estimators=8, min_samples_leaf=3, random_state=0),
    ],
)
def test_flat_forest_matches_predict(model):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 6))
    X[rng.random(X.shape) < 0.1] = np.nan
    y = np.nan_to_num(X[:, 0]) * 3 + np.nan_to_num(X[:, 1]) ** 2 + rng.normal(0, 0.1, 600)
    model.fit(X, y)
    flat = flatten(model, X[:20])
    assert flat is not None
    test = rng.normal(size=(50, 6))
    test[rng.random(test.shape) < 0.2] = np.nan
    assert np.allclose([flat.predict_one(row) for row in test], model.predict(test))


def test_other_models_are_not_flattened():
    from sklearn.linear_model import LinearRegression

    assert flatten(LinearRegression().fit(np.eye(3), [1, 2, 3])) is None
