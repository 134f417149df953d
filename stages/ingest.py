"""DVC stage `ingest`: Decode every image of `data.raw` once into small grayscale PNGs.

Reads data.raw (Kaggle/Mendeley folder or zip); writes data/images/, data/manifest.csv,
data/ingest_report.json.
The work is done by `pneumonia.dataset.ingest`; this entry point reads params.yaml and runs it.
"""

from pneumonia.dataset import ingest
from pneumonia.params import load_params
from pneumonia.stage_runner import run_stage


def main() -> None:
    run_stage(lambda: ingest.run(load_params()), "ingest")


if __name__ == "__main__":
    main()
