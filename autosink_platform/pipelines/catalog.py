"""Every pipeline by name, found in this package: each module of ``pipelines/`` that declares a
``PipelineSpec`` at module level adds that pipeline (the sink, fed by the fleet's sessions, and
the detector pipelines on public datasets). Adding a pipeline is adding one module."""

from __future__ import annotations

import importlib
import pkgutil

from autosink_platform import pipelines
from autosink_platform.pipelines.spec import PipelineSpec, Sessions


def _declared() -> dict[str, PipelineSpec]:
    found: dict[str, PipelineSpec] = {}
    for module in sorted(m.name for m in pkgutil.iter_modules(pipelines.__path__)):
        for value in vars(importlib.import_module(f"{pipelines.__name__}.{module}")).values():
            if isinstance(value, PipelineSpec) and found.setdefault(value.name, value) is not value:
                raise ValueError(f"two pipelines are named {value.name!r} (one in pipelines/{module}.py)")
    return found


PIPELINES: dict[str, PipelineSpec] = _declared()
# the pipelines on public datasets (read in place), as benchmarks and tests iterate them
REFERENCE_PIPELINES = {n: s for n, s in PIPELINES.items() if not isinstance(s.source, Sessions)}
