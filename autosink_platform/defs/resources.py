"""Every external system is a resource. Empty values mean the embedded default (see ``home``);
production sets them in resource config, e.g. ``MlflowResource(tracking_uri=dg.EnvVar(...))``."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd

from autosink_platform.files import S3_ENDPOINT_ENV, location, put_bytes
from autosink_platform.home import default_mlflow_artifact_root, default_mlflow_tracking_uri, resolve_home
from autosink_platform.labeling.protocol import LabeledSamples
from autosink_platform.lake.sessions import Lake
from autosink_platform.lake.store import FeatureStore
from autosink_platform.pipelines.lifecycle import TrainedModel
from autosink_platform.registry.mlflow_registry import Registry
from autosink_platform.registry.promotion import AuditLog
from autosink_platform.registry.releases import Release
from autosink_platform.release.channel import FleetChannel
from autosink_platform.release.signing import default_key_path, ensure_keypair, load_private_key
from autosink_platform.thresholds import OperatingPoint
from autosink_platform.validation.dataset import DatasetRef
from autosink_platform.validation.samples import RefDataset


class LakeResource(dg.ConfigurableResource):
    """The raw data lake: a folder or an object-store URL such as ``s3://bucket/lake`` (default:
    ``$AUTOSINK_LAKE``, else ``$AUTOSINK_HOME/lake``; S3 endpoint ``$AUTOSINK_S3_ENDPOINT``)."""

    root: str = ""

    def get(self) -> Lake:
        return Lake(self.root or os.environ.get("AUTOSINK_LAKE") or resolve_home().lake)


class FeatureStoreResource(dg.ConfigurableResource):
    """Labeled feature store and dataset snapshots: a folder or an object-store URL such as
    ``s3://bucket/store`` (default: ``$AUTOSINK_STORE``, else ``$AUTOSINK_HOME/store``)."""

    root: str = ""

    def location(self):
        return location(self.root or os.environ.get("AUTOSINK_STORE") or resolve_home().store)

    def get(self, pipeline: str) -> FeatureStore:
        return FeatureStore(self.location(), pipeline)


class FleetChannelResource(dg.ConfigurableResource):
    """The release channel the fleet pulls from, and the Ed25519 key that signs it (default:
    ``$AUTOSINK_SIGNING_KEY``, else ``~/.config/autosink/fleet-signing-key.pem``, created on first use).

    ``root`` is a folder or an S3 URL (default: ``$AUTOSINK_FLEET``, else ``$AUTOSINK_HOME/fleet``).
    For S3-compatible stores, ``storage_options`` go to s3fs (default endpoint:
    ``$AUTOSINK_FLEET_S3_ENDPOINT``, else ``$AUTOSINK_S3_ENDPOINT``; credentials from the usual AWS variables) and ``put_options``
    to every write (``$AUTOSINK_FLEET_PUBLIC_READ=1`` adds ``ACL: public-read`` so devices can GET)."""

    root: str = ""
    storage_options: dict[str, str] = {}
    put_options: dict[str, str] = {}
    signing_key: str = ""
    audit_log: str = ""  # promotions and rollbacks (default: $AUTOSINK_HOME/audit/promotions.jsonl)

    def audit(self) -> AuditLog:
        return AuditLog(self.audit_log or resolve_home().root / "audit" / "promotions.jsonl")

    def get(self) -> FleetChannel:
        path = Path(self.signing_key).expanduser() if self.signing_key else default_key_path()
        if not path.exists():
            if self.signing_key:  # configured explicitly: a missing key is an error, never replaced
                raise FileNotFoundError(f"signing key {path} does not exist (autosink fleet keygen --out {path})")
            ensure_keypair(path)
        storage, put = dict(self.storage_options), dict(self.put_options)
        if endpoint := os.environ.get("AUTOSINK_FLEET_S3_ENDPOINT") or os.environ.get(S3_ENDPOINT_ENV):
            storage.setdefault("endpoint_url", endpoint)
        if os.environ.get("AUTOSINK_FLEET_PUBLIC_READ") == "1":
            put.setdefault("ACL", "public-read")
        root = self.root or os.environ.get("AUTOSINK_FLEET") or resolve_home().fleet
        return FleetChannel(root, load_private_key(path), storage, put)


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry (default: ``$MLFLOW_TRACKING_URI``, else SQLite under ``mlflow/``)."""

    tracking_uri: str = ""
    artifact_root: str = ""  # where new experiments keep artifacts; empty = the server's default

    def get(self) -> Registry:
        uri = self.tracking_uri or default_mlflow_tracking_uri()
        return Registry(uri, self.artifact_root or default_mlflow_artifact_root(uri))


DATAFRAME = "__dataframe__"  # how a data-frame field (a release's case table) is marked in JSON


def _plain(value):
    """A field value as JSON: data frames as their records, numpy scalars as Python numbers."""
    if isinstance(value, pd.DataFrame):
        return {DATAFRAME: json.loads(value.to_json(orient="records"))}
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not stored in a reference")


def _restore(value):
    return pd.DataFrame(value[DATAFRAME]) if isinstance(value, dict) and set(value) == {DATAFRAME} else value


def dump_ref(obj) -> bytes:
    """``{"kind": ..., "value": ...}``: the kind is a stable name from ``REF_KINDS`` and the value
    the dataclass's fields, so a stored run never depends on where a class is defined."""
    if dataclasses.is_dataclass(obj):
        kind = next((k for k, cls in REF_KINDS.items() if type(obj) is cls), None)
        if kind is None:
            raise TypeError(f"{type(obj).__name__} has no stable name in REF_KINDS: add one to store it")
        value = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, dict):
        kind, value = "json", obj
    else:
        raise TypeError(f"a stage handed on a {type(obj).__name__}: only dataclasses in REF_KINDS and dicts are stored")
    return json.dumps({"kind": kind, "value": value}, default=_plain, indent=1).encode()


def load_ref(data: bytes, where: str = "reference"):
    stored = json.loads(data)
    kind, value = stored["kind"], stored["value"]
    if kind == "json":
        return value
    if kind not in REF_KINDS:
        raise ValueError(f"{where}: unknown reference kind {kind!r} (known: {sorted(REF_KINDS)})")
    return REF_KINDS[kind](**{k: _restore(v) for k, v in value.items()})


class RefIOManager(dg.ConfigurableIOManager):
    """Stores the small references stages hand each other (dataset ref, model version,
    operating point, release) as JSON under ``<store>/_refs`` (the store's folder or object-store
    prefix); the data itself lives in the store, MLflow and the fleet channel. A home written
    before references were JSON still loads: a missing ``.json`` falls back to the old ``.pkl``
    (read only; the next materialization writes JSON)."""

    root: str = ""

    def _path(self, key: dg.AssetKey, suffix: str = ".json"):
        base = location(self.root) if self.root else FeatureStoreResource().location() / "_refs"
        return base.joinpath(*key.path[:-1], f"{key.path[-1]}{suffix}")

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        put_bytes(self._path(context.asset_key), dump_ref(obj))

    def load_input(self, context: dg.InputContext):
        path = self._path(context.asset_key)
        if path.exists():
            return load_ref(path.read_bytes(), str(path))
        legacy = self._path(context.asset_key, ".pkl")
        if legacy.exists():
            return pickle.loads(legacy.read_bytes())
        raise FileNotFoundError(
            f"{path}: upstream asset {context.asset_key.to_user_string()} has not been materialized in this home"
        )


# Stable names of what stages hand each other (never rename one: stored runs refer to it).
REF_KINDS: dict[str, type] = {
    "dataset": DatasetRef,
    "reference_dataset": RefDataset,
    "labeled_samples": LabeledSamples,
    "trained_model": TrainedModel,
    "trained_detector": TrainedModel,  # detectors' before the lifecycles were one (same fields, fewer)
    "operating_point": OperatingPoint,
    "release": Release,
}
