"""`pneumonia site ...`: the site commands (docs/new-site.md). Each subcommand is a module with
`add_arguments(parser)` and `command(args)`, imported only when it runs or builds --help."""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "check": ("pneumonia.site.check",
              ("no labels: do these images differ from the model's validation images (MMD on "
              "embeddings, permutation p), and their pneumonia prevalence (Saerens EM)")),
    "check-study": ("pneumonia.site.check_study",
                    ("measure site check: false alarms on held-out validation images, power on "
                    "the test set (metrics/site-check.md)")),
    "calibrate": ("pneumonia.site.calibrate",
                  ("fit the threshold and conformal sets on a site's labelled images; register "
                  "the same weights as alias site-NAME")),
    "study": ("pneumonia.site.study",
              ("the official test set as a new site: k labelled images calibrate, the rest are "
              "scored, repeated patient-grouped splits (metrics/site.md)")),
    "adapt": ("pneumonia.site.adapt",
              ("AdaBN: re-estimate BatchNorm statistics on a site's unlabelled images; register "
              "the adapted weights as alias site-NAME")),
    "adapt-study": ("pneumonia.site.adapt_study",
                    ("measure AdaBN on trained runs: adapt on half of the test set, score the "
                    "rest; control on validation images (metrics/site-adapt.md)")),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="site_command", required=True, metavar="COMMAND")
    for name, (module, text) in SUBCOMMANDS.items():
        cmd = sub.add_parser(name, help=text, description=text)
        importlib.import_module(module).add_arguments(cmd)


def command(args: argparse.Namespace) -> int:
    return importlib.import_module(SUBCOMMANDS[args.site_command][0]).command(args)

