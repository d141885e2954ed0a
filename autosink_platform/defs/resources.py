"""Every external system is a resource, configured at the edge: ``settings`` builds them from
the environment (``definitions.py`` with ``dg.EnvVar``, so the UI shows where each value comes
from; the command line with the values). An empty field means the embedded default under the
home; nothing here reads the environment. The model stack (torch, MLflow) is imported when a
resource uses it, not with this module: the fleet API and the command line build the stores'
resources without it."""

from __future__ import annotations

import dataclasses
import json
import pickle
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
import numpy as np
import pandas as pd

from autosink_platform.files import location, put_bytes, use_s3_endpoint
from autosink_platform.home import EMBEDDED_MLFLOW_URI, default_mlflow_artifact_root, resolve_home
from autosink_platform.lake.public import default_datasets_root
from autosink_platform.lake.sessions import Lake
from autosink_platform.lake.store import FeatureStore
from autosink_platform.release.channel import FleetChannel
from autosink_platform.release.signing import DEFAULT_KEY, ensure_keypair, load_private_key, root_key_path
from autosink_platform.thresholds import OperatingPoint
from autosink_platform.validation.dataset import DatasetRef

if TYPE_CHECKING:
    from autosink_platform.registry.mlflow_registry import Registry
    from autosink_platform.registry.promotion import AuditLog


class _Stored(dg.ConfigurableResource):
    """A store under the home (``home``), or at ``root``: a folder or an object-store URL such
    as ``s3://bucket/prefix``, whose endpoint is ``s3_endpoint`` (empty: AWS)."""

    home: str = ""
    root: str = ""
    s3_endpoint: str = ""

    def setup_for_execution(self, context) -> None:
        use_s3_endpoint(self.s3_endpoint)

    def _root(self, part: str) -> str | Path:
        """``root``, else ``<home>/<part>``, with this process's S3 endpoint set for it."""
        use_s3_endpoint(self.s3_endpoint)
        return self.root or resolve_home(self.home).root / part


class LakeResource(_Stored):
    """The raw data lake (default: ``<home>/lake``)."""

    def get(self) -> Lake:
        return Lake(self._root("lake"))


class FeatureStoreResource(_Stored):
    """Labeled feature store and dataset snapshots (default: ``<home>/store``)."""

    def location(self):
        return location(self._root("store"))

    def get(self, pipeline: str) -> FeatureStore:
        return FeatureStore(self.location(), pipeline)


class FleetChannelResource(_Stored):
    """The release channel the fleet pulls from (``root``: a folder or an S3 URL, default
    ``<home>/fleet``), a TUF repository signed with the online key ``signing_key`` (default
    ``~/.config/autosink/fleet-signing-key.pem``; made on first use unless ``create_key`` is off).
    The offline ``root_key`` (default: ``fleet-root-key.pem`` beside it) is read only when the
    channel has no root yet. Also the audit log of promotions and the devices' heartbeats.
    ``channel_s3_endpoint`` (else ``s3_endpoint``) and ``storage_options`` go to s3fs,
    ``put_options`` to every write; ``public_read="1"`` adds ``ACL: public-read`` so devices can
    GET releases."""

    channel_s3_endpoint: str = ""
    public_read: str = ""
    storage_options: dict[str, str] = {}
    put_options: dict[str, str] = {}
    signing_key: str = ""
    root_key: str = ""
    create_key: bool = True  # a deployment that mounts its key sets False: a missing secret is then an error
    audit_log: str = ""  # promotions and rollbacks (default: <home>/audit/promotions.jsonl)

    def audit(self) -> AuditLog:
        from autosink_platform.registry.promotion import AuditLog

        return AuditLog(self.audit_log or resolve_home(self.home).root / "audit" / "promotions.jsonl")

    def heartbeats(self) -> Path:
        """The fleet API's log of what each device runs."""
        return resolve_home(self.home).heartbeats

    def _key(self, path: Path) -> Path:
        if not path.exists():
            if not self.create_key:  # never a new key where the deployment's was expected
                raise FileNotFoundError(f"key {path} does not exist (autosink fleet keygen --out {path})")
            ensure_keypair(path)
        return path

    def get(self) -> FleetChannel:
        path = self._key(Path(self.signing_key or DEFAULT_KEY).expanduser())
        storage, put = dict(self.storage_options), dict(self.put_options)
        if endpoint := self.channel_s3_endpoint or self.s3_endpoint:
            storage.setdefault("endpoint_url", endpoint)
        if self.public_read == "1":
            put.setdefault("ACL", "public-read")
        root_key = root_key_path(path, self.root_key)
        return FleetChannel(
            self._root("fleet"), load_private_key(path), storage, put, lambda: load_private_key(self._key(root_key))
        )


class MlflowResource(dg.ConfigurableResource):
    """MLflow tracking and registry (default: the SQLite registry under ``mlflow/``)."""

    tracking_uri: str = ""
    artifact_root: str = ""  # where new experiments keep artifacts; empty = the server's default

    def get(self) -> Registry:
        from autosink_platform.registry.mlflow_registry import Registry

        uri = self.tracking_uri or EMBEDDED_MLFLOW_URI
        return Registry(uri, self.artifact_root or default_mlflow_artifact_root(uri))


class ReferenceDataResource(dg.ConfigurableResource):
    """Where the public datasets are read in place (default: ``../shared/datasets`` beside the
    repository)."""

    root: str = ""

    def get(self) -> Path:
        return Path(self.root) if self.root else default_datasets_root()


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
    """``{"kind": ..., "value": ...}``: the kind is a stable name from ``ref_kinds()`` and the value
    the dataclass's fields, so a stored run never depends on where a class is defined."""
    if dataclasses.is_dataclass(obj):
        kind = next((k for k, cls in ref_kinds().items() if type(obj) is cls), None)
        if kind is None:
            raise TypeError(f"{type(obj).__name__} has no stable name in ref_kinds(): add one to store it")
        value = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    elif isinstance(obj, dict):
        kind, value = "json", obj
    else:
        raise TypeError(
            f"a stage handed on a {type(obj).__name__}: only dataclasses in ref_kinds() and dicts are stored"
        )
    return json.dumps({"kind": kind, "value": value}, default=_plain, indent=1).encode()


def load_ref(data: bytes, where: str = "reference"):
    stored = json.loads(data)
    kind, value = stored["kind"], stored["value"]
    if kind == "json":
        return value
    if kind not in (kinds := ref_kinds()):
        raise ValueError(f"{where}: unknown reference kind {kind!r} (known: {sorted(kinds)})")
    return kinds[kind](**{k: _restore(v) for k, v in value.items()})


class RefIOManager(dg.ConfigurableIOManager):
    """Stores the small references stages hand each other (dataset ref, model version,
    operating point, release) as JSON under ``<store>/_refs`` (the store's folder or object-store
    prefix); the data itself lives in the store, MLflow and the fleet channel. A home written
    before references were JSON still loads: a missing ``.json`` falls back to the old ``.pkl``
    (read only; the next materialization writes JSON)."""

    store: FeatureStoreResource

    def _path(self, key: dg.AssetKey, suffix: str = ".json"):
        base = self.store.location() / "_refs"
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


@cache
def ref_kinds() -> dict[str, type]:
    """Stable names of what stages hand each other (never rename one: stored runs refer to it)."""
    from autosink_platform.labeling.protocol import LabeledSamples
    from autosink_platform.pipelines.lifecycle import TrainedModel
    from autosink_platform.registry.releases import Release

    return {
        "dataset": DatasetRef,
        "reference_dataset": DatasetRef,  # a sample set's, before there was one snapshot reference
        "labeled_samples": LabeledSamples,
        "trained_model": TrainedModel,
        "trained_detector": TrainedModel,  # detectors' before the lifecycles were one (same fields, fewer)
        "operating_point": OperatingPoint,
        "release": Release,
    }
