"""pandera schemas for the tables the reference pipelines hand from stage to stage."""

from __future__ import annotations

import pandera.pandas as pa
from pandera.typing import Series

from autosink_platform.validation.schemas import SPLITS


class RobotArmRows(pa.DataFrameModel):
    """robotarm-train.csv as read: one row every 5 s, four joint readings."""

    id: Series[int] = pa.Field(ge=0, unique=True)
    datetime: Series[str] = pa.Field(str_matches=r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
    axis_1: Series[float] = pa.Field(nullable=False)
    axis_2: Series[float] = pa.Field(nullable=False)
    axis_3: Series[float] = pa.Field(nullable=False)
    axis_4: Series[float] = pa.Field(nullable=False)

    class Config:
        strict = True
        coerce = True


class Samples(pa.DataFrameModel):
    """Every reference pipeline's validated dataset: one row per sample (in the order of its
    array of inputs), with the label, the split and the group its case slices use."""

    sample: Series[int] = pa.Field(ge=0, unique=True)
    source: Series[str]  # the raw file (or dataset) the sample came from
    position: Series[int] = pa.Field(ge=0)  # row, image index or window start within the source
    label: Series[int] = pa.Field(isin=[0, 1])  # 1 = anomalous
    split: Series[str] = pa.Field(isin=list(SPLITS))
    group: Series[str]

    class Config:
        strict = "filter"
        coerce = True

    @pa.dataframe_check(error="training data must be normal: detectors are fitted on normal samples only")
    def train_is_normal(cls, df) -> bool:
        return bool((df.loc[df["split"] == "train", "label"] == 0).all())


class LabeledSampleRows(Samples):
    """A sample with its label's provenance, as the sink's labeled frames carry it: where the
    label came from (for the reference pipelines, the protocol's own files) and how sure it is."""

    label_source: Series[str] = pa.Field(isin=["protocol"])
    confidence: Series[float] = pa.Field(gt=0.0, le=1.0)


class SkabRows(pa.DataFrameModel):
    """A SKAB CSV as read (``;``-separated, 1 Hz)."""

    datetime: Series[str]
    Accelerometer1RMS: Series[float]
    Accelerometer2RMS: Series[float]
    Current: Series[float]
    Pressure: Series[float]
    Temperature: Series[float]
    Thermocouple: Series[float]
    Voltage: Series[float]
    Volume_Flow_RateRMS: Series[float] = pa.Field(alias="Volume Flow RateRMS")
    anomaly: Series[float] = pa.Field(isin=[0.0, 1.0])

    class Config:
        strict = "filter"
        coerce = True
