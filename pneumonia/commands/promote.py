"""`pneumonia promote VERSION --reason ...`: its options, and the run on pneumonia/promote.py."""

from __future__ import annotations

import argparse

from pneumonia import promote
from pneumonia.errors import PipelineError
from pneumonia.inference.loading import registry_name, store_uri


def add_promote_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("version", help="the registered model version to make champion")
    parser.add_argument("--reason", required=True,
                        help="why (recorded in the registry, shown by `pneumonia predict`)")
    parser.add_argument("--by", default=None,
                        help="who decides (default: $PNEUMONIA_USER or the login name)")
    parser.add_argument("--name", default=None,
                        help="registered model (default: params.yaml evaluate.registry_name)")


def promote_command(args: argparse.Namespace) -> int:
    import mlflow

    from pneumonia.tracking import tracking_uri

    uri = store_uri()
    if uri is None:
        raise PipelineError(f"the MLflow store {tracking_uri()} does not exist: nothing was "
                            "registered here (set MLFLOW_TRACKING_URI to the team's store).")
    mlflow.set_tracking_uri(uri)
    name = args.name or registry_name()
    done = promote.promote(mlflow.MlflowClient(), name, args.version, args.reason, args.by)
    print(f"the gate would say about version {done['version']}: {done['gate']} - "
          f"{done['gate_reason']}")
    print(f"champion of {name!r}: version {done['previous_champion'] or 'none'} -> "
          f"{done['version']}, promoted by hand by {done['by']} at {done['at']}: "
          f"{done['reason']}")
    return 0
