"""Stage `validate`: check data/manifest.csv with a great-expectations suite and look for leakage.

Writes metrics/validation.json (DVC metric: numeric summary on top, details below) and
metrics/validation.md, then fails (exit 2) when an expectation fails, or when leakage is found and
`validate.leakage: error`. Reports are written before failing so they can be read.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from pneumonia.errors import PipelineError
from pneumonia.files import write_json
from pneumonia.params import Params
from pneumonia.paths import (
    CLASSES,
    LABELS,
    MANIFEST,
    MANIFEST_COLUMNS,
    TABLE1,
    UNSPECIFIED,
    VALIDATION_JSON,
    VALIDATION_MD,
)

log = logging.getLogger(__name__)

SPLITS = ("train", "test")
LABEL_CLASS_PAIRS = [("NORMAL", "normal"), ("PNEUMONIA", "bacteria"), ("PNEUMONIA", "virus")]
N_EXAMPLES = 5


def _expectations(params: Params, columns: list[str]) -> list[tuple[str, Any, str]]:
    """(name, GX expectation, fix hint) for the manifest, in report order."""
    import great_expectations.expectations as gxe

    v = params.validate
    present = [c for c in MANIFEST_COLUMNS if c in columns]
    checks: list[tuple[str, Any, str]] = [
        ("required_columns_present",
         gxe.ExpectTableColumnsToMatchSet(column_set=MANIFEST_COLUMNS, exact_match=False),
         "re-run ingest to rebuild the manifest"),
    ]
    checks += [(f"{c}_not_null", gxe.ExpectColumnValuesToNotBeNull(column=c),
                "re-run ingest to rebuild the manifest") for c in present]
    own = params.data.layout == "folders"  # causes may be unrecorded (pneumonia/dataset/folders)
    classes = (*CLASSES, UNSPECIFIED) if own else CLASSES
    pairs = [*LABEL_CLASS_PAIRS, ("PNEUMONIA", UNSPECIFIED)] if own else LABEL_CLASS_PAIRS
    in_sets = {"label": LABELS, "class": classes, "split": SPLITS}
    checks += [(f"{c}_in_set", gxe.ExpectColumnValuesToBeInSet(column=c, value_set=list(s)),
                "check the class folders and file names of the dataset")
               for c, s in in_sets.items() if c in columns]
    if {"label", "class"} <= set(columns):
        checks.append(("label_matches_class", gxe.ExpectColumnPairValuesToBeInSet(
            column_A="label", column_B="class", value_pairs_set=pairs),
            "a file name says one class and its folder another: move or remove the file"))
    if "image_id" in columns:
        checks.append(("image_id_unique", gxe.ExpectColumnValuesToBeUnique(column="image_id"),
                       "rename or remove the duplicate files"))
    if "sha256" in columns:
        checks.append(("sha256_is_hex_digest", gxe.ExpectColumnValuesToMatchRegex(
            column="sha256", regex=r"^[0-9a-f]{64}$"), "re-run ingest"))
    for side in ("width", "height"):
        if side in columns:
            checks.append((f"{side}_within_bounds", gxe.ExpectColumnValuesToBeBetween(
                column=side, min_value=v.min_side, max_value=v.max_side),
                "fix or remove the file, or adjust validate.min_side / validate.max_side"))
    return checks


def _gx_validate(manifest: pd.DataFrame, params: Params) -> list[dict[str, Any]]:
    """Run the GX suites; return one result dict per expectation (name, success, examples)."""
    logging.getLogger("great_expectations").setLevel(logging.WARNING)  # chatty at INFO
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    for name in list(logging.root.manager.loggerDict):  # some GX modules set their own level
        if name.startswith("great_expectations."):
            logging.getLogger(name).setLevel(logging.WARNING)

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # no tqdm bar per validate
    source = ctx.data_sources.add_pandas("manifest_source")

    df = manifest.copy()
    df["_row"] = range(len(df))  # lets us show whole rows as examples
    runs: list[tuple[pd.DataFrame, list[tuple[str, Any, str]], pd.DataFrame]] = [
        (df, _expectations(params, list(manifest.columns)), manifest)
    ]
    # Table I describes the Kermany release: your own data (`folders`) has counts of its own.
    if params.validate.table1_counts and params.data.layout == "kermany" \
            and {"split", "label"} <= set(manifest.columns):
        counts = _table1_counts(manifest)
        counts["_row"] = range(len(counts))
        check = gxe.ExpectColumnPairValuesToBeEqual(column_A="images", column_B="expected")
        runs.append((counts, [("table1_counts", check,
                               ("the dataset is incomplete or not the Kermany 2018 release; "
                               "download it again, or set validate.table1_counts: false"))],
                     counts.drop(columns="_row")))

    # Every split must hold every class (issue 35): a test set without NORMAL images scores a
    # constant classifier at accuracy 1.000 with an undefined ROC AUC. The validation set is
    # carved out of train by the split stage, which checks it again (pneumonia/dataset/split.py);
    # here a train split without a class is caught, as no validation set carved from it can
    # have one. `task: three_class` needs every cause (normal / bacteria / virus) as well.
    if {"split", "label"} <= set(manifest.columns):
        for split_name in SPLITS:
            part = df[df.split == split_name]
            if part.empty:  # ingest stops on a missing split; another check names a bad value
                continue
            checks = [(f"{split_name}_has_every_label", gxe.ExpectColumnDistinctValuesToContainSet(
                column="label", value_set=list(LABELS)), _class_hint(split_name))]
            if params.task == "three_class" and "class" in manifest.columns:
                checks.append((f"{split_name}_has_every_class",
                               gxe.ExpectColumnDistinctValuesToContainSet(
                                   column="class", value_set=list(CLASSES)),
                               _class_hint(split_name)))
            runs.append((part, checks, part.drop(columns="_row")))

    results: list[dict[str, Any]] = []
    for i, (frame, checks, shown) in enumerate(runs):
        batch = (source.add_dataframe_asset(f"asset{i}")
                 .add_batch_definition_whole_dataframe("all")
                 .get_batch(batch_parameters={"dataframe": frame}))
        suite = gx.ExpectationSuite(name=f"suite{i}")
        for name, expectation, _ in checks:
            expectation.meta = {"check": name}
            suite.add_expectation(expectation)
        outcome = batch.validate(suite, result_format={
            "result_format": "COMPLETE", "unexpected_index_column_names": ["_row"]})
        by_name = {r.expectation_config.meta["check"]: r for r in outcome.results}
        for name, _, hint in checks:
            results.append(_summarise(name, by_name[name], shown, hint))
    return results


def _class_hint(split_name: str) -> str:
    if split_name == "test":
        return ("every metric needs both classes in the test set (a constant model would score "
                "accuracy 1 on one class): add that class's images to the test folder, or let "
                "ingest draw the test set (data.test_fraction) from a tree without split folders")
    return ("the model cannot learn a class it never sees, nor can validation measure it: add "
            "that class's images to the training images")


def _table1_counts(manifest: pd.DataFrame) -> pd.DataFrame:
    rows = [{"split": s, "label": lbl,
             "images": int(((manifest.split == s) & (manifest.label == lbl)).sum()),
             "expected": n} for (s, lbl), n in TABLE1.items()]
    return pd.DataFrame(rows)


def _summarise(name: str, result: Any, shown: pd.DataFrame, hint: str) -> dict[str, Any]:
    res = result.result or {}
    error = None
    if result.exception_info and result.exception_info.get("raised_exception"):
        error = result.exception_info.get("exception_message")
    rows = [int(r["_row"]) for r in res.get("unexpected_index_list") or []]
    examples = shown.iloc[rows[:N_EXAMPLES]].to_dict(orient="records") if rows else []
    out: dict[str, Any] = {"name": name, "success": bool(result.success)}
    if "unexpected_count" in res:
        out["unexpected_count"] = int(res["unexpected_count"])
    if "observed_value" in res:
        observed = _jsonable(res["observed_value"])
        if isinstance(observed, list):
            observed = [o for o in observed if o != "_row"]
        out["observed_value"] = observed
    if res.get("partial_missing_list"):  # a value set expected in a column, not all found
        out["missing"] = [_jsonable(v) for v in res["partial_missing_list"]]
    if error:
        out["error"] = str(error)
    out["examples"] = [{k: _jsonable(v) for k, v in e.items()} for e in examples]
    out["hint"] = hint
    return out


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def duplicate_groups(manifest: pd.DataFrame) -> list[dict[str, Any]]:
    """Groups of byte-identical source files (same sha256), each with its splits, labels and
    images (`split/label/image_id`), in sha256 order."""
    groups = []
    for digest, g in manifest.groupby("sha256", sort=True):
        if len(g) > 1:
            g = g.sort_values(["split", "label", "image_id"])
            groups.append({
                "sha256": digest, "splits": sorted(set(g.split)),
                "labels": sorted(set(g.label)),
                "images": [f"{r.split}/{r.label}/{r.image_id}" for r in g.itertuples()],
            })
    return groups


# Two readings of the NORMAL file names (nobody can know which is right): `strict` takes the id as
# written, so NORMAL2-IM-0095 and IM-0095 are two patients (the dataset's own convention, 170
# patients in both train and test on the shared copy); `merge_normal2` reads them as one patient,
# as a published audit of the dataset does (264 patients in both: 94 more NORMAL ids).
PATIENT_RULES = ("strict", "merge_normal2")


def patient_key(patient_ids: pd.Series, rule: str = "strict") -> pd.Series:
    """The patient id under a reading of the file names (PATIENT_RULES): `merge_normal2` drops
    the `NORMAL2-` (any `NORMAL<n>-`) prefix, so NORMAL2-IM-0095 becomes IM-0095."""
    if rule not in PATIENT_RULES:
        raise ValueError(f"patient rule must be one of {', '.join(PATIENT_RULES)}, got {rule!r}")
    ids = patient_ids.astype(str)
    if rule == "strict":
        return ids
    return ids.str.replace(r"^NORMAL\d*-", "", regex=True, case=False)


def patients_in_train_and_test(manifest: pd.DataFrame, rule: str = "strict") -> list[str]:
    """Patient ids with images in both the train split (train + validation) and the test split
    (ids read by ``rule``, see PATIENT_RULES)."""
    ids = patient_key(manifest.patient_id, rule)
    train_p = set(ids[manifest.split == "train"])
    test_p = set(ids[manifest.split == "test"])
    return sorted(train_p & test_p)


def leaking_test_images(manifest: pd.DataFrame, rule: str = "strict") -> pd.DataFrame:
    """Per test image: does it leak training information? The two kinds of leakage
    `find_leakage` reports, image by image. Columns `image_id`, `patient` (its patient id read
    by ``rule``), `patient_in_train` (that patient has a train/validation image),
    `duplicate_of_train` (its source bytes equal a train image's) and `leakfree` (neither)."""
    across = {g["sha256"] for g in duplicate_groups(manifest) if len(g["splits"]) > 1}
    both = set(patients_in_train_and_test(manifest, rule))
    test = manifest[manifest.split == "test"]
    patient = patient_key(test.patient_id, rule)
    out = pd.DataFrame({
        "image_id": test.image_id.to_numpy(),
        "patient": patient.to_numpy(),
        "patient_in_train": patient.isin(both).to_numpy(),
        "duplicate_of_train": test.sha256.isin(across).to_numpy(),
    })
    out["leakfree"] = ~(out.patient_in_train | out.duplicate_of_train)
    return out


def find_leakage(manifest: pd.DataFrame) -> dict[str, Any]:
    """Byte-identical files within and across splits, and patients in both train and test."""
    groups = duplicate_groups(manifest)
    within = [g for g in groups if len(g["splits"]) == 1]
    across = [g for g in groups if len(g["splits"]) > 1]
    conflicting = [g for g in groups if len(g["labels"]) > 1]
    both = patients_in_train_and_test(manifest)
    return {
        "duplicate_groups_within_split": len(within),
        "duplicate_images_within_split": sum(len(g["images"]) for g in within),
        "duplicate_groups_across_splits": len(across),
        "duplicate_groups_conflicting_labels": len(conflicting),
        "patients_in_train_and_test": len(both),
        "examples": {
            "within_split": within[:N_EXAMPLES],
            "across_splits": across[:N_EXAMPLES],
            "conflicting_labels": conflicting[:N_EXAMPLES],
            "patients_in_train_and_test": both[: 4 * N_EXAMPLES],
        },
    }


def _leakage_messages(leak: dict[str, Any]) -> list[str]:
    msgs = []
    ex = leak["examples"]
    if leak["duplicate_groups_within_split"]:
        e = ", ".join(ex["within_split"][0]["images"])
        msgs.append(f"{leak['duplicate_groups_within_split']} group(s) of byte-identical files "
                    f"within a split, e.g. {e}")
    if leak["duplicate_groups_across_splits"]:
        e = ", ".join(ex["across_splits"][0]["images"])
        msgs.append(f"{leak['duplicate_groups_across_splits']} group(s) of byte-identical files "
                    f"in both train and test, e.g. {e}")
    if leak["duplicate_groups_conflicting_labels"]:
        e = ", ".join(ex["conflicting_labels"][0]["images"])
        msgs.append(f"{leak['duplicate_groups_conflicting_labels']} group(s) of byte-identical "
                    f"files with different labels, e.g. {e}")
    if leak["patients_in_train_and_test"]:
        e = ", ".join(ex["patients_in_train_and_test"][:5])
        msgs.append(f"{leak['patients_in_train_and_test']} patient id(s) in both train and "
                    f"test, e.g. {e}")
    return msgs


def _describe_failure(r: dict[str, Any]) -> str:
    if r.get("error"):
        return f"{r['name']}: could not be evaluated ({r['error'].splitlines()[0]}); {r['hint']}"
    n = r.get("unexpected_count")
    if r["name"].endswith(("_has_every_label", "_has_every_class")):
        split_name = r["name"].split("_has_")[0]
        column = "label" if r["name"].endswith("_label") else "class"
        missing = " or ".join(r.get("missing") or ["?"])
        return (f"{r['name']}: the {split_name} split has no {missing} image (no row with that "
                f"{column}); {r['hint']}")
    if r["name"] == "table1_counts":
        wrong = ", ".join(f"{e['split']}/{e['label']} {e['images']} (expected {e['expected']})"
                          for e in r["examples"])
        return f"table1_counts: {wrong}; {r['hint']}"
    if r["name"].endswith("_within_bounds"):
        ex = ", ".join(f"image_id={e['image_id']} ({e['width']}x{e['height']}) from "
                       f"{e['source_file']}" for e in r["examples"][:3])
        return f"{r['name']}: {n} row(s) out of range, e.g. {ex}; {r['hint']}"
    if r["examples"]:
        keys = ("image_id", "label", "class", "split", "source_file")
        ex = "; ".join(", ".join(f"{k}={e[k]}" for k in keys if k in e)
                       for e in r["examples"][:3])
        return f"{r['name']}: {n} row(s) fail, e.g. {ex}; {r['hint']}"
    return f"{r['name']}: failed (observed {r.get('observed_value')}); {r['hint']}"


def run(params: Params) -> dict[str, Any]:
    """Validate data/manifest.csv in the current directory; write and return the report."""
    if not MANIFEST.is_file():
        raise PipelineError(f"{MANIFEST} not found: run the ingest stage first (dvc repro ingest).")
    manifest = pd.read_csv(MANIFEST, dtype=str, keep_default_na=False, na_values=[""])
    for side in ("width", "height"):
        if side in manifest.columns:
            manifest[side] = pd.to_numeric(manifest[side], errors="coerce")

    results = _gx_validate(manifest, params)
    leak = find_leakage(manifest) if {"sha256", "split", "patient_id", "label",
                                      "image_id"} <= set(manifest.columns) else None
    leak_msgs = _leakage_messages(leak) if leak else []
    unchecked = []  # a warning whatever validate.leakage says: nothing was found, nor can be
    if params.data.layout == "folders" and not params.data.metadata:
        # Every image is its own patient: two images of one child can land in train and test
        # (or train and validation) and nothing here can tell.
        unchecked.append(
            "patient leakage cannot be checked: data.metadata gives no patient ids, so every "
            "image counts as its own patient (two images of one patient may be split apart). "
            "Give a CSV with path and patient_id columns in data.metadata."
        )
    failed = [r for r in results if not r["success"]]
    leak_is_error = params.validate.leakage == "error" and bool(leak_msgs)
    success = not failed and not leak_is_error

    report: dict[str, Any] = {
        "success": success,
        "rows": len(manifest),
        "expectations_evaluated": len(results),
        "expectations_failed": len(failed),
        "duplicate_groups_within_split": leak["duplicate_groups_within_split"] if leak else 0,
        "duplicate_groups_across_splits": leak["duplicate_groups_across_splits"] if leak else 0,
        "patients_in_train_and_test": leak["patients_in_train_and_test"] if leak else 0,
        "details": {
            "leakage_level": params.validate.leakage,
            "expectations": results,
            "leakage": leak,
            "warnings": unchecked + ([] if leak_is_error else leak_msgs),
        },
    }
    write_json(report, VALIDATION_JSON)
    VALIDATION_MD.write_text(_markdown(report, failed, unchecked + leak_msgs), encoding="utf-8")

    for msg in unchecked:
        log.warning("%s", msg)
    for msg in [] if leak_is_error else leak_msgs:
        log.warning("leakage (validate.leakage: warn): %s", msg)
    if not success:
        problems = [_describe_failure(r) for r in failed]
        if leak_is_error:
            problems += [f"leakage: {m}" for m in leak_msgs]
            problems.append("leakage: set validate.leakage: warn to accept the official split's "
                            "known duplicates and patient overlap")
        raise PipelineError(
            f"{MANIFEST} failed validation ({len(problems)} problem(s); details in "
            f"{VALIDATION_JSON} and {VALIDATION_MD}):\n" + "\n".join(f"  - {p}" for p in problems)
        )
    log.info("%s: %d expectations passed", MANIFEST, len(results))
    return report


def _markdown(report: dict[str, Any], failed: list[dict[str, Any]], leak_msgs: list[str]) -> str:
    lines = [
        "# Data validation (data/manifest.csv)", "",
        f"- Result: **{'passed' if report['success'] else 'FAILED'}**",
        f"- Rows: {report['rows']}",
        (f"- Expectations: {report['expectations_evaluated']} evaluated, "
        f"{report['expectations_failed']} failed"),
        "", "| expectation | result |", "|---|---|",
    ]
    lines += [f"| {r['name']} | {'ok' if r['success'] else 'FAILED'} |"
              for r in report["details"]["expectations"]]
    if failed:
        lines += ["", "## Failures", ""] + [f"- {_describe_failure(r)}" for r in failed]
    level = report["details"]["leakage_level"]
    lines += ["", f"## Leakage (validate.leakage: {level})", ""]
    lines += [f"- {m}" for m in leak_msgs] or ["- none found"]
    return "\n".join(lines) + "\n"


