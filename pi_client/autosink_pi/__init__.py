"""autosink-pi: the device side of the fleet channel (sync, verify, infer, status, heartbeat)."""

__version__ = "0.1.0"
