"""Site names: what `--site NAME` accepts, and the registry alias of a site's version.

A name is 1-40 characters, lower-case letters, digits and `-`, starting with a letter or digit
(`st-marys`, `site2`): it becomes part of an MLflow alias (`site-NAME`), which MLflow restricts
to letters, digits, `_` and `-`, and which must not look like a version number (`v3`).
"""

from __future__ import annotations

import re

from pneumonia.errors import PipelineError

PREFIX = "site-"
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")


def check(name: str) -> str:
    """The site name, or a PipelineError saying what a valid one looks like."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise PipelineError(
            f"--site {name!r}: not a valid site name. Use 1-40 lower-case letters, digits and "
            "'-', starting with a letter or digit (e.g. st-marys, site2); it becomes the "
            f"registry alias {PREFIX}NAME.")
    return name


def alias(name: str) -> str:
    """The registry alias of the site's calibrated version."""
    return PREFIX + check(name)
