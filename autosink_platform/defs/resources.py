"""Every external system is a resource. Empty values mean the embedded default (see ``home``);
production sets them in resource config, e.g. ``MlflowResource(tracking_uri=dg.EnvVar(...))``."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import dagster as dg

from autosink_platform.files import S3_ENDPOINT_ENV, location, put_bytes
from autosink_platform.home import default_mlflow_artifact_root, default_mlflow_tracking_uri, resolve_home
from autosink_platform.lake.sessions import Lake
from autosink_platform.lake.store import FeatureStore
from autosink_platform.registry.mlflow_registry import Registry
from autosink_platform.registry.promotion import AuditLog
from autosink_platform.release.channel import FleetChannel
from autosink_platform.release.signing import default_key_path, ensure_keypair, load_private_key


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


class RefIOManager(dg.ConfigurableIOManager):
    """Stores the small references stages hand each other (dataset ref, model version,
    operating point) under ``<store>/_refs`` (the store's folder or object-store prefix); the
    data itself lives in the store, MLflow and the fleet channel."""

    root: str = ""

    def _path(self, key: dg.AssetKey):
        base = location(self.root) if self.root else FeatureStoreResource().location() / "_refs"
        return base.joinpath(*key.path[:-1], f"{key.path[-1]}.pkl")

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        put_bytes(self._path(context.asset_key), pickle.dumps(obj))

    def load_input(self, context: dg.InputContext):
        path = self._path(context.asset_key)
        if not path.exists():
            raise FileNotFoundError(
                f"{path}: upstream asset {context.asset_key.to_user_string()} has not been materialized in this home"
            )
        return pickle.loads(path.read_bytes())
