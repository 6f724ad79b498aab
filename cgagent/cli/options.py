"""Help texts the typer commands share with `run`, whose options are all in cgagent.runflags."""

from __future__ import annotations

from cgagent.runflags import PRESERVE_FDS_HELP, STATE_DIR_HELP, split_image

__all__ = ["PRESERVE_FDS_HELP", "STATE_DIR_HELP", "split_image"]
