"""The exception a user's mistake raises (stages print it as one message, exit 2), and the masking
of credentials in anything the pipeline prints or stores."""

from __future__ import annotations

import re


class PipelineError(Exception):
    """An error the user can fix (bad input, bad params). Stages print it without a traceback."""


# `scheme://userinfo@` — the userinfo of a URL (`user:password`, or a bare token) is a secret.
# The whole userinfo is masked: a token given as `http://<token>@host` has no colon.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)[^/?#@\s'\"<>]+@")
MASK = "***"


def mask_credentials(text: str) -> str:
    """`text` with the credentials of every URL in it masked: `http://user:pass@host:5000/x`
    becomes `http://***@host:5000/x`. The one helper for every URI (or message that may contain
    one: MLflow and requests quote the URL they called) that is printed, logged or written to a
    file (models/mlflow_run.json is cached and pushed by DVC). Credentials belong in
    MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (docs/security.md)."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
