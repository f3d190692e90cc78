"""Hypothesis profiles of the conformance suite.

``conformance`` (the default) draws a few derandomized examples per test so CI
is reproducible on a two-core machine; ``thorough`` draws many random ones:
``RECUROPS_CONFORMANCE_PROFILE=thorough nox -s conformance``; ``quick`` draws two,
for GPU machines where every new shape compiles kernels. The comparison
machinery is in ``harness.py``.
"""

import os

from hypothesis import HealthCheck, settings

COMMON = dict(deadline=None, print_blob=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("conformance", max_examples=10, derandomize=True, **COMMON)
# for slow machines: kernels compiled per shape (MLX CUDA, Triton)
settings.register_profile("quick", max_examples=2, derandomize=True, **COMMON)
settings.register_profile("thorough", max_examples=100, **COMMON)
settings.load_profile(os.environ.get("RECUROPS_CONFORMANCE_PROFILE", "conformance"))
