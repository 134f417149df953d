"""`dvc push` / `pull` / `fetch` with one clear message when the DVC remote fails.

    python -m pneumonia.team.remote push [-r NAME] [targets ...]    (also: pull, fetch)

DVC 3.67 reports an unreachable S3 endpoint or rejected credentials as
`ERROR: unexpected error - Could not connect to the endpoint URL: "http://…"` or
`… Forbidden: An error occurred (403) …`, naming neither the remote nor the fix. This wrapper runs
the same DVC command and, when it fails, names the remote, its URL and endpoint, what went wrong
and the command that fixes it (exit 2). Only the standard library: it runs wherever `dvc` does
(the pull-request workflow installs DVC alone).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

COMMANDS = ("push", "pull", "fetch")

# (what DVC / botocore prints, what it means, how to fix it; {name} is the remote)
PROBLEMS = (
    (
        ("Unable to locate credentials", "InvalidAccessKeyId", "SignatureDoesNotMatch",
         "Forbidden", "AccessDenied", "(403)", "ExpiredToken"),
        "its credentials are missing or rejected",
        (
            "set them, kept out of git: `dvc remote modify --local {name} access_key_id <KEY>` "
            "and `dvc remote modify --local {name} secret_access_key <SECRET>` (or export "
            "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)"
        ),
    ),
    (
        ("NoSuchBucket", "bucket does not exist", "specified bucket does not exist"),
        "its bucket does not exist",
        (
            "create the bucket, or point the remote at an existing one: "
            "`dvc remote modify {name} url s3://<bucket>/<path>`"
        ),
    ),
    (
        ("Could not connect to the endpoint URL", "failed to connect", "Connection refused",
         "EndpointConnectionError", "Name or service not known", "timed out"),
        "it is unreachable",
        (
            "check that the storage server is running and the endpoint is right: "
            "`dvc remote modify {name} endpointurl http://<host>:<port>` (for the local "
            "servers: `make mlflow-server` prints it)"
        ),
    ),
)


def dvc_config(key: str) -> str:
    out = subprocess.run(["dvc", "config", key], capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def remote_name(args: list[str]) -> str:
    """The remote a DVC command uses: `-r/--remote NAME`, else the default remote."""
    for i, arg in enumerate(args):
        if arg in ("-r", "--remote") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--remote="):
            return arg.split("=", 1)[1]
    return dvc_config("core.remote")


def explain(command: str, name: str, stderr: str) -> str:
    """One message naming the remote, the problem and the fix (or a pointer to DVC's output)."""
    if not name:
        return (
            f"`dvc {command}` failed and no DVC remote is configured. Add one: `dvc remote add "
            "-d storage s3://<bucket>/<path>` (docs/team.md)."
        )
    url = dvc_config(f"remote.{name}.url") or "?"
    endpoint = dvc_config(f"remote.{name}.endpointurl")
    where = f"DVC remote '{name}' ({url}" + (f", endpoint {endpoint})" if endpoint else ")")
    for needles, what, fix in PROBLEMS:
        if any(n.lower() in stderr.lower() for n in needles):
            return f"`dvc {command}` failed: {where}: {what}. Fix: {fix.format(name=name)}."
    return f"`dvc {command}` failed using {where}; DVC's own message is above."


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in COMMANDS:
        print(f"usage: python -m pneumonia.team.remote {{{','.join(COMMANDS)}}} [dvc args]",
              file=sys.stderr)
        sys.exit(2)
    command, args = argv[0], argv[1:]
    if shutil.which("dvc") is None:  # else a raw FileNotFoundError
        print("\nERROR: `dvc` is not on PATH. Install DVC with its S3 support "
              "(`pip install dvc dvc-s3`), or use the project's environment: `make install`, "
              "then run `make push` / `make pull` (they put .venv/bin first on PATH).",
              file=sys.stderr)
        sys.exit(2)
    proc = subprocess.run(["dvc", command, *args], stderr=subprocess.PIPE, text=True, check=False)
    sys.stderr.write(proc.stderr)
    if proc.returncode != 0:
        print(f"\nERROR: {explain(command, remote_name(args), proc.stderr)}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
