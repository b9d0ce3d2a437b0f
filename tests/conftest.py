"""Test-suite settings: property tests are derandomized under CI (same examples every run,
so a CI result is reproducible); locally they explore new examples each run."""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
