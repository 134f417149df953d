"""The paper's further work over seeds, from committed predictions and evaluate outputs.

Two summaries, each a .json + .md pair under metrics/ and a sentence quoted in
docs/further-work.md (between `<!-- quoted:NAME -->` markers, rewritten here so that a re-run
cannot leave the docs behind; tests/test_quoted_figures.py recomputes it):

- **PNEUMONIA recall by cause** (``causes``): for every arm of the committed ablation
  (metrics/ablation/abl-<arm>-s<seed>.csv) and of the recipe search (metrics/recipe/rcp-...),
  each seed's recall on the bacterial and on the viral test images (the cause is in Kermany's
  file name: ``person.._bacteria_..``, ``_virus_``) and NORMAL recall, at the runs' threshold
  0.5; per arm the mean over seeds with its 95 % t-interval over seeds, and the paired
  difference bacterial - viral (same seed, same test set) with its t-interval.
- **Three classes** (``three_class``): runs trained with ``task: three_class`` whose evaluate
  outputs are committed under metrics/runs/<name>/ (evaluate.json = the complete record,
  metrics/details/evaluate.json): bacterial-vs-viral accuracy per run with its
  patient-bootstrap interval, and the mean over seeds with its t-interval, beside Kermany et
  al.'s 0.907 (pneumonia.evaluation.causes). ``--import RUN_OUT...`` first copies a finished
  run's small evaluate outputs (never its model) into metrics/runs/<basename>/.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from pneumonia.errors import PipelineError
from pneumonia.evaluation.causes import KERMANY_BACTERIA_VS_VIRUS
from pneumonia.files import write_json_and_markdown
from pneumonia.stats.seeds import t_interval

CAUSES_OUT = Path("metrics/causes")
THREE_CLASS_OUT = Path("metrics/three-class")
DOC = Path("docs/further-work.md")
THRESHOLD = 0.5  # the ablation's and the recipe's runs all used 0.5 (metrics/ablation.json)
SOURCES = {"ablation": ("metrics/ablation", "abl-"), "recipe": ("metrics/recipe", "rcp-")}
RUN_NAME = re.compile(r"^(?P<prefix>abl|rcp)-(?P<arm>.+)-s(?P<seed>\d+)\.csv$")
# A three-class run's files copied by --import (source under RUN_OUT -> name in metrics/runs/):
# the complete evaluate record, the test and validation predictions and the report. No model.
IMPORTED = {"metrics/details/evaluate.json": "evaluate.json",
            "metrics/predictions.csv": "predictions.csv",
            "metrics/predictions_val.csv": "predictions_val.csv",
            "metrics/table3.md": "table3.md",
            "metrics/details/train.json": "train.json"}
MEASURES = ("bacteria", "virus", "normal", "bacteria_minus_virus")


def _summary(values: list[float], bounds: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    low, high = t_interval(values, bounds=bounds)
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1))
            if len(values) > 1 else None, "ci_low": low, "ci_high": high,
            "per_seed": [round(v, 6) for v in values], "n_seeds": len(values)}


def recall_by_cause(root: Path = Path(".")) -> dict[str, Any]:
    """{source: {arm: {measure: summary over seeds}}} from the committed prediction CSVs."""
    from pneumonia.experiments.predictions import parse_predictions

    out: dict[str, Any] = {}
    for source, (folder, prefix) in SOURCES.items():
        runs: dict[str, dict[int, Path]] = {}
        for f in sorted((root / folder).glob(f"{prefix}*-s*.csv")):
            m = RUN_NAME.match(f.name)
            if m:
                runs.setdefault(m["arm"], {})[int(m["seed"])] = f
        if not runs:
            raise PipelineError(f"{root / folder}: no {prefix}<arm>-s<seed>.csv predictions; "
                                "they are committed with the ablation / recipe reports.")
        arms: dict[str, Any] = {}
        for arm, seeds in runs.items():
            per: dict[str, list[float]] = {k: [] for k in MEASURES}
            for seed in sorted(seeds):
                path = seeds[seed]
                d = parse_predictions(path.read_text(encoding="utf-8"), str(path))
                called = (d["probability"] >= THRESHOLD).to_numpy()
                ids = d["image_id"].str.lower()
                for cause in ("bacteria", "virus"):
                    rows = ids.str.contains(f"_{cause}").to_numpy()
                    if not rows.any():
                        raise PipelineError(f"{path}: no `_{cause}` image id; the cause is read "
                                            "from Kermany's file names.")
                    per[cause].append(float(called[rows].mean()))
                normal = (d["actual"] == "NORMAL").to_numpy()
                per["normal"].append(float((~called[normal]).mean()))
                per["bacteria_minus_virus"].append(per["bacteria"][-1] - per["virus"][-1])
            arms[arm] = {"seeds": sorted(seeds)} | {
                k: _summary(v, (-1.0, 1.0) if k == "bacteria_minus_virus" else (0.0, 1.0))
                for k, v in per.items()}
        out[source] = arms
    return out


def _ci(s: dict[str, Any], signed: bool = False) -> str:
    f = "{:+.3f}" if signed else "{:.3f}"
    if s.get("ci_low") is None:
        return f"{f.format(s['mean'])} (one seed: no interval)"
    return f"{f.format(s['mean'])} [{f.format(s['ci_low'])}, {f.format(s['ci_high'])}]"


def causes_sentence(doc: dict[str, Any]) -> str:
    """docs/further-work.md's quoted sentence: the ablation's DenseNet121 arms."""
    parts = []
    for arm, s in doc["arms"]["ablation"].items():
        if not arm.startswith("densenet121"):
            continue
        parts.append(f"{arm} ({s['bacteria']['n_seeds']} seeds): bacterial "
                     f"{_ci(s['bacteria'])}, viral {_ci(s['virus'])}, difference "
                     f"{_ci(s['bacteria_minus_virus'], True)}, NORMAL recall {_ci(s['normal'])}")
    return "; ".join(parts)


def _intro(title: str, doc: dict[str, Any], source: str) -> list[str]:
    """A generated report's title and its "Generated by `command` <source>" paragraph."""
    return [f"# {title}", "", f"Generated by `{doc['command']}` {source}", ""]


def causes_markdown(doc: dict[str, Any]) -> str:
    lines = _intro("PNEUMONIA recall by cause, over seeds", doc,
                   ("from the committed test predictions "
                    "(metrics/ablation/abl-*.csv, metrics/recipe/rcp-*.csv; the official 624-image test "
                    "set of the development copy: 5840 of its 5856 images are 224-px re-encodings, not "
                    "the public download). Threshold 0.5 (the runs'). The cause is in Kermany's file "
                    "name (234 normal, 242 bacterial, 148 viral test images). Cells: mean over seeds "
                    "[95 % t-interval over seeds]; the difference is bacterial - viral recall of the "
                    "same seed (paired). Inference only: no model is run."))
    for source, arms in doc["arms"].items():
        lines += [f"## {source}", "",
                  ("| arm | seeds | bacterial recall | viral recall | bacterial - viral | "
                  "NORMAL recall |"), "|---|---|---|---|---|---|"]
        for arm, s in arms.items():
            lines.append(f"| {arm} | {len(s['seeds'])} | {_ci(s['bacteria'])} | "
                         f"{_ci(s['virus'])} | {_ci(s['bacteria_minus_virus'], True)} | "
                         f"{_ci(s['normal'])} |")
        lines.append("")
    return "\n".join(lines)


def import_runs(run_outs: list[Path], root: Path = Path(".")) -> list[str]:
    """Copy each finished run's small evaluate outputs into metrics/runs/<basename>/; the names."""
    names = []
    for run in run_outs:
        missing = [src for src in IMPORTED if not (run / src).is_file()]
        if "metrics/details/evaluate.json" in missing or "metrics/predictions.csv" in missing:
            raise PipelineError(f"{run}: no {' / '.join(missing)}: not a finished run's output "
                                "(its metrics/ folder copied after `dvc exp run`).")
        dest = root / "metrics" / "runs" / run.name
        dest.mkdir(parents=True, exist_ok=True)
        for src, name in IMPORTED.items():
            if (run / src).is_file():
                shutil.copyfile(run / src, dest / name)
        names.append(run.name)
    return names


def _train_seed(name: str) -> int | None:
    """The training seed in a run's name (`...-s<N>`; evaluate.json's `seed` is the
    bootstrap's)."""
    m = re.search(r"-s(\d+)$", name)
    return int(m.group(1)) if m else None


def three_class(runs: list[Path]) -> dict[str, Any]:
    """Per run and over seeds: bacterial-vs-viral accuracy and the three-class accuracy."""
    per_run: dict[str, Any] = {}
    for run in runs:
        path = run / "evaluate.json"
        if not path.is_file():
            raise PipelineError(f"{path}: missing (import the run first: --import RUN_OUT)")
        ev = json.loads(path.read_text(encoding="utf-8"))
        key = "cause_bacteria_vs_virus_accuracy"
        if ev.get(key) is None:
            raise PipelineError(f"{path}: no {key}: not a `task: three_class` run's "
                                "evaluate record.")
        per_run[run.name] = {m: {"value": ev[f"cause_{m}"], "ci_low": ev[f"cause_{m}_ci_low"],
                                 "ci_high": ev[f"cause_{m}_ci_high"]}
                             for m in ("bacteria_vs_virus_accuracy", "accuracy",
                                       "macro_f1", "bacteria_recall", "virus_recall",
                                       "normal_recall")} | {
            "binary_accuracy": ev.get("accuracy"), "seed": _train_seed(run.name)}
    over = {m: _summary([r[m]["value"] for r in per_run.values()])
            for m in ("bacteria_vs_virus_accuracy", "accuracy", "virus_recall")}
    return {"runs": per_run, "over_seeds": over, "kermany": KERMANY_BACTERIA_VS_VIRUS}


def _run_cell(m: dict[str, Any]) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def three_class_sentence(doc: dict[str, Any]) -> str:
    bv = doc["over_seeds"]["bacteria_vs_virus_accuracy"]
    runs = ", ".join(f"{name} {_run_cell(r['bacteria_vs_virus_accuracy'])}"
                     for name, r in doc["runs"].items())
    k = doc["kermany"]
    if bv["ci_low"] is None:
        verdict = "one seed: no interval over seeds yet"
    elif bv["ci_low"] <= k <= bv["ci_high"]:
        verdict = "inside the interval over seeds: not distinguishable from it"
    else:
        verdict = ("above" if bv["ci_low"] > k else "below") + " the interval over seeds"
    return (f"Bacterial-vs-viral accuracy over {bv['n_seeds']} seed(s): {_ci(bv)} "
            f"(per run, patient-bootstrap interval: {runs}); three-class accuracy "
            f"{_ci(doc['over_seeds']['accuracy'])}; Kermany et al.: {k} ({verdict})")


def three_class_markdown(doc: dict[str, Any]) -> str:
    lines = _intro("Three classes (normal / bacterial / viral) with the CPU recipe, over seeds",
                   doc, ("from the committed evaluate records "
                         "metrics/runs/<run>/evaluate.json (runs trained with `dvc exp run -S "
                         "task=three_class $(pneumonia preset cpu) -S train.seed=N` on the development copy: "
                         "5840 of its 5856 images are 224-px re-encodings, not the public download). "
                         "Bacterial-vs-viral accuracy: on the 390 pneumonia test images, the larger of "
                         "P(bacteria) and P(virus) names the cause. Per run: the value with its 95 % "
                         "patient-bootstrap interval; over seeds: the mean with its 95 % t-interval. "
                         f"Kermany et al. (Cell 2018): {doc['kermany']} with an ImageNet-pretrained "
                         "InceptionV3 trained on the two causes only, no interval given."))
    lines += [("| run | seed | bacterial vs viral | three-class accuracy | viral recall | "
             "macro F1 | binary accuracy |"), "|---|---|---|---|---|---|---|"]
    for name, r in doc["runs"].items():
        lines.append(f"| {name} | {r['seed']} | {_run_cell(r['bacteria_vs_virus_accuracy'])} | "
                     f"{_run_cell(r['accuracy'])} | {_run_cell(r['virus_recall'])} | "
                     f"{_run_cell(r['macro_f1'])} | {r['binary_accuracy']:.3f} |")
    o = doc["over_seeds"]
    lines += ["", (f"Over seeds: bacterial vs viral {_ci(o['bacteria_vs_virus_accuracy'])}, "
              f"three-class accuracy {_ci(o['accuracy'])}, viral recall "
              f"{_ci(o['virus_recall'])}; Kermany et al. {doc['kermany']}."), ""]
    return "\n".join(lines)


def replace_quoted(text: str, name: str, sentence: str, where: str) -> str:
    """`text` with the block between `<!-- quoted:name -->` and `<!-- /quoted -->` replaced."""
    pattern = re.compile(rf"(<!-- quoted:{re.escape(name)} -->\n).*?(\n<!-- /quoted -->)",
                         re.DOTALL)
    if not pattern.search(text):
        raise PipelineError(f"{where}: no `<!-- quoted:{name} -->` ... `<!-- /quoted -->` block "
                            "to rewrite; add the two marker lines where the figure goes.")
    return pattern.sub(lambda m: m.group(1) + sentence + m.group(2), text, count=1)


def write_all(command: str, three_class_runs: list[Path], root: Path = Path("."),
              doc_path: Path | None = None) -> list[Path]:
    """Write metrics/causes.* and (with runs) metrics/three-class.*, rewrite the docs' quotes."""
    causes = {"command": command, "threshold": THRESHOLD, "arms": recall_by_cause(root)}
    write_json_and_markdown(causes, causes_markdown(causes), root / CAUSES_OUT)
    written = [root / CAUSES_OUT]
    doc_path = doc_path or root / DOC
    text = replace_quoted(doc_path.read_text(encoding="utf-8"), "recall-by-cause-ablation",
                          causes_sentence(causes), str(doc_path))
    if three_class_runs:
        tc = {"command": command} | three_class(three_class_runs)
        write_json_and_markdown(tc, three_class_markdown(tc), root / THREE_CLASS_OUT)
        written.append(root / THREE_CLASS_OUT)
        text = replace_quoted(text, "three-class", three_class_sentence(tc), str(doc_path))
    doc_path.write_text(text, encoding="utf-8")
    return written
