"""The registry: one line per kind. A new kind is a module here plus a line below."""

from . import gla, rglru, rotlru, s6, ssd

KINDS = {kind.name: kind for kind in (ssd.KIND, gla.KIND, rglru.KIND, rotlru.KIND, s6.KIND)}
"""Every registered kind by name: ``KINDS["ssd"].signature()`` shows its inputs."""
