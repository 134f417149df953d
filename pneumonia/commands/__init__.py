"""The command line's options: the argparse code of every `pneumonia` command, one module per
group (pipeline, experiments, inference, evaluation, promote, site, team). Each command parses its
options and calls the library; pneumonia/cli.py dispatches to it, and nothing else imports it."""
