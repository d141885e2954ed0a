"""Models: the sink classifier and frame guard, and the anomaly detector families.

The detector families are imported on first use: a module that needs only the models'
settings (``models.configs``) must not pull in torch with this package."""

__all__ = ["FAMILIES", "Detector", "OnnxDetector", "build_detector"]


def __getattr__(name: str):
    if name in __all__:
        from autosink_platform.models import detectors

        return getattr(detectors, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
