"""pandera schemas for the tables that cross stage boundaries, and the one way to apply them."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

SPLITS = ("train", "validation", "test")


class SessionRecords(pa.DataFrameModel):
    """One row per ingested session: what ``raw_sessions`` hands to labeling (the record in the
    feature store). The lake's format checks come first; this is the contract of the record."""

    session_id: Series[str] = pa.Field(str_length={"min_value": 1})
    device_id: Series[str] = pa.Field(str_length={"min_value": 1})
    started_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "ns", "tz": "UTC"})
    ended_at: Series[pd.DatetimeTZDtype] = pa.Field(dtype_kwargs={"unit": "ns", "tz": "UTC"})
    fps: Series[float] = pa.Field(gt=0, le=120)
    firmware: Series[str]
    model_version: Series[str]
    schema_version: Series[int] = pa.Field(isin=[1])
    frames: Series[int] = pa.Field(ge=1)
    width: Series[int] = pa.Field(ge=16, le=4096)
    height: Series[int] = pa.Field(ge=16, le=4096)
    events: Series[int] = pa.Field(ge=0)
    content_sha256: Series[str] = pa.Field(str_matches=r"^[0-9a-f]{64}$")

    class Config:
        strict = True
        coerce = True
        unique = ["session_id"]

    @pa.dataframe_check(error="a session ends after it starts")
    def ordered(cls, df: pd.DataFrame) -> pd.Series:
        return df["ended_at"] >= df["started_at"]


class LabeledFrames(pa.DataFrameModel):
    """One row per frame of an ingested session, labeled or not."""

    session_id: Series[str]
    device_id: Series[str]
    frame_index: Series[int] = pa.Field(ge=0)
    t: Series[float] = pa.Field(ge=0)
    frame_path: Series[str] = pa.Field(str_matches=r"^raw/.+\.(png|jpg|jpeg)$")
    label: Series[pd.Int8Dtype] = pa.Field(isin=[0, 1], nullable=True)
    label_source: Series[pd.StringDtype] = pa.Field(isin=["override", "implicit", "review"], nullable=True)
    confidence: Series[float] = pa.Field(ge=0.0, le=1.0)
    model_decision: Series[int] = pa.Field(isin=[0, 1])

    class Config:
        strict = True
        coerce = True
        unique = ["session_id", "frame_index"]

    @pa.dataframe_check(error="a label needs a source and a confidence > 0; an unlabeled frame has neither")
    def label_provenance(cls, df: pd.DataFrame) -> pd.Series:
        labeled = df["label"].notna()
        return (labeled == df["label_source"].notna()) & (labeled == (df["confidence"] > 0))


class DatasetFrames(LabeledFrames):
    """A validated dataset: labeled frames plus the session-level split."""

    split: Series[str] = pa.Field(isin=list(SPLITS))

    @pa.dataframe_check(error="a session's frames must all be in one split")
    def split_by_session(cls, df: pd.DataFrame) -> pd.Series:
        return df.groupby("session_id")["split"].transform("nunique") == 1


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


class DataValidationError(ValueError):
    """Raised by ``validate``: names the asset, and every failing column and check."""

    def __init__(self, asset: str, failure_cases: pd.DataFrame):
        self.asset, self.failure_cases = asset, failure_cases
        summary = (
            failure_cases.groupby(["column", "check"], dropna=False).size().reset_index(name="n").to_string(index=False)
        )
        super().__init__(f"{asset}: data validation failed ({len(failure_cases)} failure cases)\n{summary}")


def validate(df: pd.DataFrame, schema: type[pa.DataFrameModel], asset: str) -> pd.DataFrame:
    """Validate lazily (every failure collected) and raise DataValidationError if any."""
    try:
        return schema.validate(df, lazy=True)
    except pa.errors.SchemaErrors as e:
        cases = e.failure_cases[["column", "check", "index", "failure_case"]].copy()
        cases["column"] = cases["column"].fillna("<table>").astype(str)
        raise DataValidationError(asset, cases) from None
