"""autosink platform: turn fleet feedback into validated, signed model releases."""

__version__ = "0.1.0"
