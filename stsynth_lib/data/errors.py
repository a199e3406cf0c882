"""The one error type of the data layer (kept apart so that io, sn7, rasterize and build import it at the top)."""

from __future__ import annotations


class SN7DataError(ValueError):
    """A SpaceNet 7 file or folder that cannot be used; the message names the file and the fix."""
