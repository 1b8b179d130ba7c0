"""The supported agentlightning releases, and the one installed, read without importing agentlightning.

``import lightning_attempts`` checks here (importlib.metadata, no agentlightning import) that the
installed release has the legacy server this package patches: agentlightning 1.0 removed it, and
without agentlightning there is nothing to patch. ``compat`` imports agentlightning itself.
"""

from __future__ import annotations

import importlib.metadata

SUPPORTED_RANGE = ">=0.1,<1.0"
SUPPORTED_RELEASES = ("0.1", "0.1.1", "0.1.2", "0.2.0", "0.2.1", "0.2.2", "0.3.0")

_UNSUPPORTED = (
    "lightning_attempts patches the legacy task server of agentlightning {range} "
    "(releases {releases}); {found}. Install a supported release, e.g. "
    "`pip install 'agentlightning{range}'`, or move to agentlightning's LightningStore, "
    "which has its own attempt model."
)


def unsupported(found: str) -> ImportError:
    """The error for an agentlightning this package cannot patch; ``found`` says what was found."""
    return ImportError(_UNSUPPORTED.format(range=SUPPORTED_RANGE, releases=", ".join(SUPPORTED_RELEASES), found=found))


def _installed_version() -> str | None:
    try:
        return importlib.metadata.version("agentlightning")
    except importlib.metadata.PackageNotFoundError:
        return None


AGENTLIGHTNING_VERSION = _installed_version()
"""The installed agentlightning release, or None."""

if AGENTLIGHTNING_VERSION is None:
    raise unsupported("agentlightning is not installed")
if int(AGENTLIGHTNING_VERSION.split(".")[0]) >= 1:
    raise unsupported(f"agentlightning {AGENTLIGHTNING_VERSION} is installed, which has no legacy server")
