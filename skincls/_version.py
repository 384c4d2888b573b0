"""The package version (one place; hatch reads it)."""

__version__ = "0.1.0"
