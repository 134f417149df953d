"""`data.layout: folders`: your own tree of class folders, any names, PNG/JPEG/DICOM, patients
from a metadata CSV; bad metadata is one clear message naming the CSV and its line."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pneumonia.dataset import folders, ingest
from pneumonia.errors import PipelineError
from pneumonia.params import DataParams, parse_params
from tests.dataset.hospitalkit import N_PER_LABEL, SPANNING, make_hospital, write_csv


def _data(raw: Path, **kw: object) -> DataParams:
    return DataParams(raw=str(raw), image_size=32, layout="folders",
                      **({"metadata": "patients.csv"} | kw))


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, str]]]:
    root = tmp_path_factory.mktemp("hospital")
    return root, make_hospital(root)


def test_scan_places_every_image_by_its_folders_and_the_csv(hospital: tuple) -> None:
    root, rows = hospital
    inv = folders.scan(root, _data(root))
    assert inv.bad == []
    assert len(inv.images) == 2 * N_PER_LABEL
    by_file = {i.source_file: i for i in inv.images}
    assert set(by_file) == {r["path"] for r in rows}
    for r in rows:
        img = by_file[r["path"]]
        assert img.label == ("NORMAL" if "/normal/" in r["path"].lower() else "PNEUMONIA")
        assert img.patient_id == r["patient_id"]
        assert img.klass == ("normal" if img.label == "NORMAL" else r["cause"] or "unspecified")
        assert img.split == ""  # no train/test folders, no split column: ingest draws it
        assert re.fullmatch(r"[A-Za-z0-9._-]+", img.image_id), img.image_id
    assert len({i.image_id for i in inv.images}) == len(inv.images)
    assert {i.label for i in inv.images if i.patient_id == SPANNING} == {"NORMAL", "PNEUMONIA"}
    # The README and the CSV itself are ignored, and counted.
    assert sum(inv.ignored.values()) == 2


def test_ingest_decodes_dicom_and_draws_test_by_patient(hospital: tuple, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = hospital
    monkeypatch.chdir(tmp_path)
    params = parse_params({"lr": 1e-4, "data": dataclasses.asdict(_data(root)) | {
        "normal_folders": ["normal"], "pneumonia_folders": ["pneumonia"], "test_fraction": 0.25},
        "ingest": {"workers": 1}})
    report = ingest.run(params)
    manifest = pd.read_csv("data/manifest.csv", dtype=str, keep_default_na=False)
    assert len(manifest) == 2 * N_PER_LABEL
    # 16-bit DICOM files (one without an extension) decoded beside PNG and JPEG.
    sources = manifest.source_file.str.lower()
    assert sources.str.endswith(".dcm").sum() >= 6 and sources.str.endswith("1.2.840.5").any()
    assert sources.str.endswith(".png").any() and sources.str.endswith(".jpg").any()
    for r in manifest.itertuples():  # each PNG where the manifest says, in its split's folder
        assert Path(r.path).is_file() and r.path.startswith(f"data/images/{r.split}/{r.label}/")
    per_patient = manifest.groupby("patient_id")["split"].nunique()
    assert (per_patient == 1).all()  # a patient's images all on one side, the spanning one too
    test = manifest[manifest.split == "test"]
    assert set(test.label) == {"NORMAL", "PNEUMONIA"}
    assert 0.15 < len(test) / len(manifest) < 0.35
    assert report["layout"] == "folders" and report["patient_ids"] == "data.metadata"
    assert report["test_split"]["drawn"]["test_images"] == len(test)
    written = json.loads(Path("data/ingest_report.json").read_text())
    assert written["status"] == "ok" and written["classes"]["unspecified"] > 0


def _bad_csv(root: Path, rows: list[dict[str, str]], columns: list[str] | None = None) -> str:
    write_csv(root / "patients.csv", rows, columns)
    with pytest.raises(PipelineError) as err:
        folders.scan(root, _data(root))
    return str(err.value)


@pytest.fixture
def tree(hospital: tuple, tmp_path: Path) -> tuple[Path, list[dict[str, str]]]:
    """A fresh copy of the module's tree (building one decodes and encodes 48 X-rays)."""
    root = tmp_path / "tree"
    shutil.copytree(hospital[0], root)
    return root, [dict(r) for r in hospital[1]]


def test_missing_column_names_the_csv_and_the_column(tree: tuple) -> None:
    root, rows = tree
    msg = _bad_csv(root, rows, ["path", "label"])
    assert f"{root}/patients.csv lacks column(s) patient_id" in msg
    assert "its header: path, label" in msg


def test_semicolon_csv_gets_a_hint(tree: tuple) -> None:
    root, _ = tree
    (root / "patients.csv").write_text("path;patient_id\nx.png;1\n")
    assert "';'-separated" in _bad_csv_raw(root)


def _bad_csv_raw(root: Path) -> str:
    with pytest.raises(PipelineError) as err:
        folders.scan(root, _data(root))
    return str(err.value)


def test_unknown_path_names_the_row(tree: tuple) -> None:
    root, rows = tree
    rows[3] = rows[3] | {"path": "export 2024/nowhere/ghost.png"}
    msg = _bad_csv(root, rows)
    assert "patients.csv line 5 names 'export 2024/nowhere/ghost.png'" in msg
    assert "not an image file" in msg


def test_wrong_case_path_suggests_the_real_one(tree: tuple) -> None:
    root, rows = tree
    real = rows[0]["path"]
    rows[0] = rows[0] | {"path": real.upper()}
    assert f"did you mean {real!r}" in _bad_csv(root, rows)


def test_label_that_contradicts_its_folder_names_the_row(tree: tuple) -> None:
    root, rows = tree
    rows[1] = rows[1] | {"label": "PNEUMONIA"}  # lies in a Normal folder
    msg = _bad_csv(root, rows)
    assert f"patients.csv line 3 labels {rows[1]['path']!r} PNEUMONIA" in msg
    assert "NORMAL class folder" in msg


@pytest.mark.parametrize(("field", "value", "expected"), [
    ("patient_id", "", "line 2 ({path}) has an empty patient_id"),
    ("label", "COVID", "line 2 ({path}): label 'COVID' must be one of NORMAL, PNEUMONIA"),
    ("cause", "fungal", "line 2 ({path}): cause 'fungal' must be bacteria, virus"),
])
def test_bad_values_name_the_row(tree: tuple, field: str, value: str, expected: str) -> None:
    root, rows = tree
    rows[0] = rows[0] | {field: value}
    assert expected.format(path=rows[0]["path"]) in _bad_csv(root, rows)


def test_image_missing_from_the_csv_is_named(tree: tuple) -> None:
    root, rows = tree
    msg = _bad_csv(root, rows[1:])
    assert f"1 image(s) of {root} have no row" in msg and repr(rows[0]["path"]) in msg


def test_a_mix_of_given_and_missing_splits_is_refused(tree: tuple) -> None:
    root, rows = tree
    rows[0] = rows[0] | {"split": "test"}
    assert "have a split" in _bad_csv(root, rows) and "Give every image a split, or none" in \
        _bad_csv(root, rows)


def test_split_folders_and_split_column(tree: tuple) -> None:
    """train/test folders at any depth give the split; the CSV's split must agree with them."""
    tmp_path, rows = tree
    (tmp_path / "patients.csv").unlink()
    for r in rows:  # move every image under a train/ or test/ folder, half and half
        split = "Testing" if r["patient_id"] in ("P-000", "P-001", "P-020", "P-021") else "train"
        new = f"{split}/{r['path']}"
        (tmp_path / new).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / r["path"]).rename(tmp_path / new)
        r.update(path=new, split="test" if split == "Testing" else "")
    inv = folders.scan(tmp_path, _data(tmp_path, metadata=""))
    assert {i.split for i in inv.images} == {"train", "test"}
    assert all(i.patient_id == i.image_id for i in inv.images)  # no CSV: one group per image
    rows[0]["split"] = "train" if rows[0]["split"] == "test" else "test"
    msg = _bad_csv(tmp_path, rows)
    assert "patients.csv line 2 puts" in msg and "Correct the split column" in msg


def test_no_class_folder_is_a_bad_entry_not_a_silent_drop(tree: tuple) -> None:
    tmp_path, _ = tree
    stray = tmp_path / "export 2024" / "unsorted" / "lost.png"
    stray.parent.mkdir(parents=True)
    stray.write_bytes((next(tmp_path.rglob("*.PNG"))).read_bytes())
    (tmp_path / "export 2024" / "notes.tif").write_bytes(b"II*\0")
    inv = folders.scan(tmp_path, _data(tmp_path, metadata=""))
    reasons = {b.source_file: b.reason for b in inv.bad}
    assert "no class folder on its path" in reasons["export 2024/unsorted/lost.png"]
    assert "unsupported file type '.tif'" in reasons["export 2024/notes.tif"]


def test_class_folder_names_come_from_params(tree: tuple) -> None:
    tmp_path, _ = tree
    with pytest.raises(PipelineError, match=r"no NORMAL images found.*data\.normal_folders"):
        folders.scan(tmp_path, _data(tmp_path, metadata="", normal_folders=("healthy",)))
    (tmp_path / "export 2024" / "Site A" / "Normal").rename(tmp_path / "export 2024" / "Site A"
                                                           / "HEALTHY")
    inv = folders.scan(tmp_path, _data(tmp_path, metadata="",
                                       normal_folders=("healthy", "normal")))
    assert sum(i.label == "NORMAL" for i in inv.images) == N_PER_LABEL


def test_metadata_outside_data_raw_is_refused(tree: tuple) -> None:
    root, _ = tree
    with pytest.raises(PipelineError, match=r"data\.metadata: elsewhere\.csv not found in .*"
                                            r"must lie inside data\.raw"):
        folders.scan(root, _data(root, metadata="elsewhere.csv"))


def test_overlapping_class_folder_names_are_a_params_error() -> None:
    with pytest.raises(PipelineError, match=r"data\.normal_folders.*share none"):
        parse_params({"lr": 1e-4, "data": {"raw": "x", "layout": "folders",
                                           "normal_folders": ["Normal", "x"],
                                           "pneumonia_folders": ["normal"]}})


def test_image_ids_are_safe_and_unique() -> None:
    ids = folders._unique_ids(["a b/IMG 1.dcm", "a_b/IMG_1.dcm", "c/1.2.840.5", "d/x.PNG"])
    assert ids["c/1.2.840.5"] == "c__1.2.840.5" and ids["d/x.PNG"] == "d__x"
    assert ids["a b/IMG 1.dcm"] != ids["a_b/IMG_1.dcm"]  # same sanitised name: hashed apart
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", i) for i in ids.values())


def test_validate_without_patient_ids_warns_and_skips_table1(
        tree: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No data.metadata: every image is its own patient, so validate says patient leakage
    cannot be checked (a warning even with validate.leakage: error); Table I is Kermany's and
    is not applied to your own data, even with validate.table1_counts: true."""
    from pneumonia.dataset import validate

    root, _ = tree
    (root / "patients.csv").unlink()
    monkeypatch.chdir(tmp_path)
    params = parse_params({"lr": 1e-4, "data": {"raw": str(root), "image_size": 32,
                                                "layout": "folders"},
                           "ingest": {"workers": 1},
                           "validate": {"table1_counts": True, "leakage": "error"}})
    ingest.run(params)
    report = validate.run(params)
    assert report["success"]
    names = [e["name"] for e in report["details"]["expectations"]]
    assert "table1_counts" not in names and "label_matches_class" in names
    (warning,) = report["details"]["warnings"]
    assert warning.startswith("patient leakage cannot be checked: data.metadata gives no "
                              "patient ids")
    assert "patient leakage cannot be checked" in Path("metrics/validation.md").read_text()


# ---- issue 35: nothing of your own data dropped silently ----------------------------------
def _ingest(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            **data: object) -> dict:
    tmp_path.mkdir(exist_ok=True)
    monkeypatch.chdir(tmp_path)
    params = parse_params({"lr": 1e-4, "data": dataclasses.asdict(_data(root, **data)) | {
        "test_fraction": 0.25}, "ingest": {"workers": 1}})
    return ingest.run(params)


def test_a_symlinked_folder_is_named_not_dropped(tree: tuple, tmp_path: Path) -> None:
    # A second site linked into data.raw, no metadata CSV: its images used to vanish uncounted.
    root, _ = tree
    site = tmp_path / "site C"
    shutil.copytree(root / "export 2024" / "Site A", site)
    (root / "export 2024" / "site C").symlink_to(site, target_is_directory=True)
    inv = folders.scan(root, _data(root, metadata=""))
    reasons = {b.source_file: b.reason for b in inv.bad}
    assert "symbolic link to a folder" in reasons["export 2024/site C/"]
    assert str(site) in reasons["export 2024/site C/"]
    # With the CSV naming an image under it, the message says why it is not an image file.
    rel = next(p for p in site.rglob("*") if p.is_file()).relative_to(site)
    write_csv(root / "patients.csv", [{"path": f"export 2024/site C/{rel.as_posix()}",
                                       "patient_id": "P-900"}], ["path", "patient_id"])
    with pytest.raises(PipelineError, match=r"under 'export 2024/site C/', a symbolic link to a "
                                            r"folder"):
        folders.scan(root, _data(root))


def test_a_fifo_does_not_hang_ingest(tree: tuple, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    root, _ = tree
    os.mkfifo(root / "export 2024" / "Site A" / "Normal" / "pipe.png")
    with pytest.raises(PipelineError, match=r"Site A/Normal/pipe.png: not a regular file "
                                            r"\(a FIFO"):
        _ingest(root, tmp_path / "w", monkeypatch, metadata="")
    report = json.loads((tmp_path / "w" / "data" / "ingest_report.json").read_text())
    assert [b["source_file"] for b in report["bad_files"]] == [
        "export 2024/Site A/Normal/pipe.png"]


def test_the_same_bytes_under_both_labels_are_refused(tree: tuple, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    root, _ = tree
    normal = next((root / "export 2024" / "Site A" / "Normal").glob("*.PNG"))
    copy = root / "export 2024" / "Site A" / "Pneumonia" / "copy.PNG"
    shutil.copy(normal, copy)
    with pytest.raises(PipelineError) as err:
        _ingest(root, tmp_path / "w", monkeypatch, metadata="")
    message = str(err.value)
    rel_normal = normal.relative_to(root).as_posix()
    assert f"{rel_normal}: the same bytes as export 2024/Site A/Pneumonia/copy.PNG" in message
    assert "labelled both NORMAL and PNEUMONIA" in message
    # on_bad_file: skip drops both, counted.
    monkeypatch.chdir(tmp_path / "w")
    params = parse_params({"lr": 1e-4, "data": dataclasses.asdict(_data(root, metadata="")) | {
        "test_fraction": 0.25}, "ingest": {"workers": 1, "on_bad_file": "skip"}})
    report = ingest.run(params)
    assert report["images"] == 2 * N_PER_LABEL - 1  # 49 files, both copies of one image out
    assert {b["source_file"] for b in report["bad_files"]} == {
        rel_normal, "export 2024/Site A/Pneumonia/copy.PNG"}


@pytest.mark.parametrize("name", ["Norma\u0301l", "\uff2e\uff2f\uff32\uff2d\uff21\uff2c"])
def test_folder_names_are_unicode_normalised(tree: tuple, name: str) -> None:
    # A decomposed accent (macOS file names) or full-width letters still match a class name.
    root, _ = tree
    (root / "export 2024" / "Site A" / "Normal").rename(root / "export 2024" / "Site A" / name)
    folders_param = ("Norm\u00e1l", "normal") if "\u0301" in name else ("normal",)
    inv = folders.scan(root, _data(root, metadata="", normal_folders=folders_param))
    assert sum(i.label == "NORMAL" for i in inv.images) == N_PER_LABEL
    assert inv.bad == []


def test_formula_cells_are_neutralised_in_the_manifest(tree: tuple, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root, rows = tree
    rows[0]["patient_id"] = "=cmd|' /C calc'!A0"
    rows[1]["patient_id"] = "@SUM(1+1)"
    write_csv(root / "patients.csv", rows)
    _ingest(root, tmp_path / "w", monkeypatch)
    manifest = pd.read_csv(tmp_path / "w" / "data" / "manifest.csv", dtype=str,
                           keep_default_na=False)
    assert "'=cmd|' /C calc'!A0" in set(manifest.patient_id)
    assert "'@SUM(1+1)" in set(manifest.patient_id)
    for column in manifest.columns:
        assert not manifest[column].str.match(r"[=+\-@\t\r]").any(), column


def test_absolute_metadata_path_inside_data_raw_is_accepted(tree: tuple,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """`-S data.metadata=$PWD/data/raw/site/patients.csv` (absolute), or the same path relative
    to the current directory: the CSV inside data.raw that the relative form names."""
    root, _ = tree
    relative = folders.scan(root, _data(root))
    absolute = folders.scan(root, _data(root, metadata=str(root / "patients.csv")))
    assert absolute == relative and any(i.patient_id for i in absolute.images)
    monkeypatch.chdir(root.parent)
    from_cwd = folders.scan(root, _data(root, metadata=f"{root.name}/patients.csv"))
    assert from_cwd == relative
    outside = root.parent / "elsewhere.csv"
    outside.write_text((root / "patients.csv").read_text())
    with pytest.raises(PipelineError, match=r"not found in .*must lie inside data\.raw"):
        folders.scan(root, _data(root, metadata=str(outside)))
