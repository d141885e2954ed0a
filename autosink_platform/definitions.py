"""The code location: every pipeline's assets and jobs, and the resources they share."""

import dagster as dg

from autosink_platform.defs.factory import build_pipeline_defs
from autosink_platform.defs.reference_factory import ReferenceDataResource, build_reference_defs
from autosink_platform.defs.resources import (
    FeatureStoreResource,
    FleetChannelResource,
    LakeResource,
    MlflowResource,
    RefIOManager,
)
from autosink_platform.pipelines.sink import SINK
from autosink_platform.reference.pipelines import REFERENCE_PIPELINES

PIPELINES = (SINK,)

defs = dg.Definitions.merge(
    *(build_pipeline_defs(spec) for spec in PIPELINES),
    *(build_reference_defs(spec) for spec in REFERENCE_PIPELINES.values()),
    dg.Definitions(
        resources={
            "lake": LakeResource(),
            "store": FeatureStoreResource(),
            "fleet": FleetChannelResource(),
            "mlflow": MlflowResource(),
            "io_manager": RefIOManager(),
            "datasets": ReferenceDataResource(),
        }
    ),
)
