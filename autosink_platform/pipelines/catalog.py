"""Every detector pipeline by name (the sink is ``pipelines.sink.SINK``)."""

from __future__ import annotations

from autosink_platform.pipelines.bearing import BEARING
from autosink_platform.pipelines.digits import DIGITS
from autosink_platform.pipelines.robotarm import ROBOTARM
from autosink_platform.pipelines.spec import ReferenceSpec
from autosink_platform.pipelines.valve import VALVE

REFERENCE_PIPELINES: dict[str, ReferenceSpec] = {s.name: s for s in (ROBOTARM, DIGITS, VALVE, BEARING)}
