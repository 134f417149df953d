"""Site names: what `--site NAME` accepts, and the registry alias of a site's version.

A name is 1-40 characters, lower-case letters, digits and `-`, starting with a letter or digit
(`st-marys`, `site2`): it becomes part of an MLflow alias (`site-NAME`), which MLflow restricts
to letters, digits, `_` and `-`, and which must not look like a version number (`v3`). The rule
itself is in pneumonia.inference.loading (`predict --site` uses it without importing this
package, which sits above inference).
"""

from __future__ import annotations

from pneumonia.inference.loading import SITE_PREFIX as PREFIX
from pneumonia.inference.loading import check_site_name as check
from pneumonia.inference.loading import site_alias as alias

__all__ = ["PREFIX", "alias", "check"]
