"""Hypothesis profiles of the conformance suite.

``conformance`` (the default) draws a few derandomized examples per test so CI
is reproducible on a two-core machine; ``thorough`` draws many random ones:
``RECUROPS_CONFORMANCE_PROFILE=thorough nox -s conformance``; ``quick`` draws two,
for GPU machines where every new shape compiles kernels. The comparison
machinery is in ``harness.py``.
"""

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "conformance",
    max_examples=10,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "quick",  # for slow machines: kernels compiled per shape (MLX CUDA, Triton)
    max_examples=2,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile(os.environ.get("RECUROPS_CONFORMANCE_PROFILE", "conformance"))
