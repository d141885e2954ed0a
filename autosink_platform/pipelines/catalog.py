"""Every pipeline by name: the sink (fed by the fleet's sessions) and the detector pipelines on
public datasets. Adding a pipeline is one module in ``pipelines/`` and one entry here."""

from __future__ import annotations

from autosink_platform.pipelines.bearing import BEARING
from autosink_platform.pipelines.digits import DIGITS
from autosink_platform.pipelines.robotarm import ROBOTARM
from autosink_platform.pipelines.sink import SINK
from autosink_platform.pipelines.spec import PipelineSpec, Sessions
from autosink_platform.pipelines.valve import VALVE

PIPELINES: dict[str, PipelineSpec] = {s.name: s for s in (SINK, ROBOTARM, DIGITS, VALVE, BEARING)}
# the pipelines on public datasets (read in place), as benchmarks and tests iterate them
REFERENCE_PIPELINES = {n: s for n, s in PIPELINES.items() if not isinstance(s.source, Sessions)}
