"""The MLflow model registry, as the platform uses it.

Registered models are named ``<pipeline>.<model>``. Every trained model becomes a version tagged
with the key of what it was trained on (``train_key``), so identical inputs reuse the version
instead of retraining. Aliases carry the lifecycle: ``challenger`` is the newest validated
candidate, ``champion`` the one the fleet runs.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

# MLflow (and torch, for weights) are imported when a registry is opened or used, not with this
# module: code that only names an alias (sensors, the fleet API) starts without them.

CHAMPION, CHALLENGER = "champion", "challenger"


class Registry:
    def __init__(self, tracking_uri: str, artifact_root: str | None = None):
        self.tracking_uri = tracking_uri
        self.artifact_root = artifact_root
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        import mlflow
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri, registry_uri=tracking_uri)

    def experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        location = f"{self.artifact_root.rstrip('/')}/{name}" if self.artifact_root else None
        return self.client.create_experiment(name, artifact_location=location)

    def find_version(self, model_name: str, tag: str, value: str) -> ModelVersion | None:
        """The newest version of ``model_name`` whose ``tag`` equals ``value``, if any."""
        if not self.client.search_registered_models(f"name = '{model_name}'"):
            return None
        found = self.client.search_model_versions(f"name = '{model_name}' and tags.{tag} = '{value}'")
        return max(found, key=lambda v: int(v.version)) if found else None

    def alias_version(self, model_name: str, alias: str) -> ModelVersion | None:
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version_by_alias(model_name, alias)
        except MlflowException as e:
            if e.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None  # no such model or alias yet: a normal state for a new pipeline
            raise

    def set_alias(self, model_name: str, alias: str, version: str | int) -> None:
        self.client.set_registered_model_alias(model_name, alias, str(version))

    def set_tags(self, model_name: str, version: str | int, tags: dict) -> None:
        for key, value in tags.items():
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            self.client.set_model_version_tag(model_name, str(version), key, text)

    def load_state_dict(self, version: ModelVersion) -> dict:
        """The weights a version was logged with (``state_dict.pt`` in its run)."""
        import mlflow.artifacts
        import torch

        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=version.run_id, artifact_path="state_dict.pt", dst_path=tmp, tracking_uri=self.tracking_uri
            )
            return torch.load(path, map_location="cpu", weights_only=True)

    def download(self, run_id: str, artifact_path: str, dst: str | Path) -> Path:
        import mlflow.artifacts

        return Path(
            mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=artifact_path, dst_path=str(dst), tracking_uri=self.tracking_uri
            )
        )
