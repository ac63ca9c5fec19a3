"""The agent's version, as installed (BootNotification's firmware, SunSpec model 1, the
status endpoint, diagnostics)."""

from __future__ import annotations

from importlib import metadata


def package_version(name: str = "pile-agent") -> str:
    """The installed distribution's version; "unknown" from a source tree never installed
    ("not installed" is what diagnostics says of a missing library)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
