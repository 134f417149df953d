"""The exception a user's mistake raises: stages print it as one message, exit 2."""

from __future__ import annotations


class PipelineError(Exception):
    """An error the user can fix (bad input, bad params). Stages print it without a traceback."""
