"""Shared fixtures: an isolated tbpr cache and the smoke SynthPedes rendered once per session."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def _tbpr_cache(tmp_path_factory):
    """Keep every cached artefact of the test session in a temporary folder."""
    mp = pytest.MonkeyPatch()
    mp.setenv("TBPR_CACHE", str(tmp_path_factory.mktemp("tbpr_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def smoke_root(_tbpr_cache):
    """Root of the smoke SynthPedes (CUHK-PEDES layout), rendered once per test session."""
    from tbpr.synthpedes import ensure
    return ensure("smoke", seed=0)
