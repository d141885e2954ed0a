"""Configuration at the edge: every environment variable the platform reads, and the resources
and executor they configure.

Only the entry points read the environment: ``definitions.py`` (the Dagster code location) and
``cli.py`` (the ``autosink`` command) hand the process's environment to ``Settings.from_environ``;
every component below them receives configured resources. An unset variable means the embedded
default (a home folder, SQLite, the in-process executor).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import dagster as dg

from autosink_platform.home import EMBEDDED_MLFLOW_URI, Home, resolve_home

# Every variable, and what it sets. Unset or empty: the default in brackets.
VARIABLES = {
    "AUTOSINK_HOME": "the home folder: lake, store, fleet channel, Dagster instance [.autosink/ in the project]",
    "AUTOSINK_LAKE": "the raw data lake, a folder or s3:// URL [<home>/lake]",
    "AUTOSINK_STORE": "the feature store and dataset snapshots, a folder or s3:// URL [<home>/store]",
    "AUTOSINK_FLEET": "the release channel the fleet pulls from, a folder or s3:// URL [<home>/fleet]",
    "AUTOSINK_S3_ENDPOINT": "endpoint of s3:// URLs, for MinIO or another S3-compatible store [AWS]",
    "AUTOSINK_FLEET_S3_ENDPOINT": "the channel's own S3 endpoint [AUTOSINK_S3_ENDPOINT]",
    "AUTOSINK_FLEET_PUBLIC_READ": "1: releases are written with ACL public-read, so devices can GET them [private]",
    "AUTOSINK_SIGNING_KEY": "the channel's online Ed25519 key (TUF targets, snapshot, timestamp) [~/.config/autosink/fleet-signing-key.pem, made on first use]",
    "AUTOSINK_ROOT_KEY": "the channel's offline TUF root key, read only to create the channel [fleet-root-key.pem beside the signing key]",
    "AUTOSINK_DATASETS": "the public datasets the reference pipelines read in place [../shared/datasets]",
    "MLFLOW_TRACKING_URI": "MLflow tracking and registry [SQLite under mlflow/]",
    "AUTOSINK_EXECUTOR": "how a run's steps execute: in_process, multiprocess or celery [in_process]",
    "AUTOSINK_CELERY_BROKER": "the Celery broker of the celery executor [pyamqp://guest@localhost//]",
    "AUTOSINK_CELERY_QUEUE": "the Celery queue of the celery executor [dagster]",
}
# What a resource field reads: (resource, field) -> variable.
RESOURCE_FIELDS = {
    ("lake", "home"): "AUTOSINK_HOME",
    ("lake", "root"): "AUTOSINK_LAKE",
    ("lake", "s3_endpoint"): "AUTOSINK_S3_ENDPOINT",
    ("store", "home"): "AUTOSINK_HOME",
    ("store", "root"): "AUTOSINK_STORE",
    ("store", "s3_endpoint"): "AUTOSINK_S3_ENDPOINT",
    ("fleet", "home"): "AUTOSINK_HOME",
    ("fleet", "root"): "AUTOSINK_FLEET",
    ("fleet", "s3_endpoint"): "AUTOSINK_S3_ENDPOINT",
    ("fleet", "channel_s3_endpoint"): "AUTOSINK_FLEET_S3_ENDPOINT",
    ("fleet", "public_read"): "AUTOSINK_FLEET_PUBLIC_READ",
    ("fleet", "signing_key"): "AUTOSINK_SIGNING_KEY",
    ("fleet", "root_key"): "AUTOSINK_ROOT_KEY",
    ("mlflow", "tracking_uri"): "MLFLOW_TRACKING_URI",
    ("datasets", "root"): "AUTOSINK_DATASETS",
}
EXECUTORS = ("in_process", "multiprocess", "celery")


@dataclass(frozen=True)
class Settings:
    """The platform's variables that are set (nothing else of the environment)."""

    values: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], home: str | None = None) -> Settings:
        """``environ``'s platform variables; ``home`` (a command's ``--home``) wins over its own."""
        values = {k: environ[k] for k in VARIABLES if environ.get(k)}
        if home:
            values["AUTOSINK_HOME"] = str(resolve_home(home).root)
        if values.get("AUTOSINK_EXECUTOR", "in_process") not in EXECUTORS:
            raise ValueError(f"AUTOSINK_EXECUTOR={values['AUTOSINK_EXECUTOR']!r}: expected one of {EXECUTORS}")
        return cls(values)

    def __getitem__(self, name: str) -> str:
        return self.values.get(name, "")

    @property
    def home(self) -> Home:
        return resolve_home(self["AUTOSINK_HOME"])

    def embedded_defaults(self) -> dict[str, str]:
        """The value of every resource variable that is unset, as the code location exports it
        so each resource field can be a ``dg.EnvVar`` (resolved when a run starts, so a changed
        environment reaches the next run): the home and the MLflow registry get their embedded
        paths, the rest an empty value, which means the default."""
        known = {"AUTOSINK_HOME": str(self.home.root), "MLFLOW_TRACKING_URI": EMBEDDED_MLFLOW_URI}
        return {v: known.get(v, "") for v in set(RESOURCE_FIELDS.values()) if v not in self.values}

    def resources(self, env_vars: bool = False) -> dict[str, dg.ConfigurableResource]:
        """Every resource the assets use. With ``env_vars``, each field that a variable sets is
        that ``dg.EnvVar`` (for the code location); otherwise the values themselves (for code
        that uses a resource outside a run: the command line, tests, benchmarks)."""
        from autosink_platform.defs.resources import (
            FeatureStoreResource,
            FleetChannelResource,
            LakeResource,
            MlflowResource,
            ReferenceDataResource,
            RefIOManager,
        )

        def config(resource: str) -> dict:
            return {f: dg.EnvVar(v) if env_vars else self[v] for (r, f), v in RESOURCE_FIELDS.items() if r == resource}

        store = FeatureStoreResource(**config("store"))
        return {
            "lake": LakeResource(**config("lake")),
            "store": store,
            "fleet": FleetChannelResource(**config("fleet")),
            "mlflow": MlflowResource(**config("mlflow")),
            "io_manager": RefIOManager(store=store),
            "datasets": ReferenceDataResource(**config("datasets")),
        }

    def executor_config(self) -> dict:
        """The executor's configuration (``definitions.EXECUTOR``'s schema) these variables select."""
        kind = self["AUTOSINK_EXECUTOR"] or "in_process"
        if kind != "celery":
            return {kind: {}}
        celery = {
            k: self[f"AUTOSINK_CELERY_{k.upper()}"] for k in ("broker", "queue") if self[f"AUTOSINK_CELERY_{k.upper()}"]
        }
        return {"celery": celery}
