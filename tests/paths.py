"""Where the tests find the checkout's files."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
"""The checkout."""
README = ROOT / "README.md"
GUIDE = ROOT / "migration_guide.md"
SCRIPTS = ROOT / "tests" / "scripts"
"""Scripts the tests run as processes of their own."""
