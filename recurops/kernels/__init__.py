"""Fused GPU kernels: the shared chassis and one module per kind."""
