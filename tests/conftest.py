"""Hypothesis profiles for the suite.

``default`` (loaded unless told otherwise) keeps the quick suite to a few
minutes on a two-core CI machine; ``thorough`` (``pytest
--hypothesis-profile=thorough``, the ``nox -s properties`` session) draws many
more calls; ``gpu`` (``--hypothesis-profile=gpu``) draws fewer, so the
whole suite fits the device machine's ten-minute runs, where every new
kernel shape costs a compile (docs/kernels.md, "Testing on a GPU").
"""

from hypothesis import HealthCheck, settings

COMMON = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
settings.register_profile("default", max_examples=12, **COMMON)
settings.register_profile("thorough", max_examples=200, **COMMON)
settings.register_profile("gpu", max_examples=4, **COMMON)
settings.load_profile("default")
