"""Fixtures for the advising tests (synthetic histories in :mod:`.synthetic`)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.unit.advising.synthetic import make_frame


@pytest.fixture
def frame() -> pd.DataFrame:
    return make_frame()
