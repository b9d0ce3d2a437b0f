"""Test-suite settings: property tests are derandomized under CI (same examples every run,
so a CI result is reproducible); locally they explore new examples each run."""
import os

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")


@pytest.fixture(scope="session")
def published_rows_table():
    """Every published row evaluated once for the whole session (the MLPerf server rows are
    two 40,000-request discrete-event runs)."""
    from sim.tools.validation.published import published_table
    return published_table()
