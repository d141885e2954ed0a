"""Models: the sink classifier and frame guard, and the anomaly detector families."""

from autosink_platform.models.detectors import FAMILIES, Detector, OnnxDetector, build_detector

__all__ = ["FAMILIES", "Detector", "OnnxDetector", "build_detector"]
