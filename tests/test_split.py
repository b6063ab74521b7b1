"""Split properties on generated labelled folders and on the real FracAtlas data."""

from __future__ import annotations

import collections
import json
import unicodedata
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image
from conftest import LABELLED_STRATA, write_labelled_folder

from converters.split import SPLITS, Split, SplitEntry, make_split, read_split, write_split
from edgefrac.cli import main
from edgefrac.images import load_pixels
from edgefrac.dataset import file_sha256
from edgefrac.errors import UsageError


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return write_labelled_folder(tmp_path_factory.mktemp("generated"))


@pytest.fixture(scope="module")
def generated_split(generated) -> Split:
    return make_split(generated, seed=1234)


@pytest.fixture(scope="module")
def fracatlas_split(fracatlas_dir) -> Split:
    return make_split(fracatlas_dir, seed=1234)


def splits_by(split: Split, key) -> dict:
    """Map each value of ``key(entry)`` to the set of splits it occurs in."""
    found = collections.defaultdict(set)
    for entry in split.entries:
        found[key(entry)].add(entry.split)
    return found


def stratum_deviations(split: Split) -> list[tuple]:
    """Return (stratum, split, count, expected share, largest group) for every stratum and split."""
    strata = collections.defaultdict(list)
    for entry in split.entries:
        strata[(entry.label, entry.region)].append(entry)
    rows = []
    for key, entries in sorted(strata.items()):
        group_sizes = collections.Counter(entry.sha256 for entry in entries)
        for index, name in enumerate(SPLITS):
            count = sum(entry.split == name for entry in entries)
            rows.append((key, name, count, split.fractions[index] * len(entries), max(group_sizes.values())))
    return rows


def test_split_every_image_once(generated, generated_split):
    total = sum(LABELLED_STRATA.values()) + 3
    assert len(generated_split.entries) == total
    assert len({entry.image_id for entry in generated_split.entries}) == total


def test_split_copies_share_hash(generated_split):
    hashes = collections.Counter(entry.sha256 for entry in generated_split.entries)
    assert sum(count - 1 for count in hashes.values()) == 3


def test_split_hash_in_one_split(generated_split):
    for content_hash, names in splits_by(generated_split, lambda e: e.sha256).items():
        assert len(names) == 1, f"content {content_hash[:12]} is in {sorted(names)}"


def test_split_stratified_within_one(generated_split):
    for stratum, name, count, share, largest_group in stratum_deviations(generated_split):
        assert abs(count - share) <= largest_group, f"{stratum} {name}: {count} images, share {share:.2f}"


def test_split_stratified_unit_groups(tmp_path):
    strata = {(1, "hand"): 17, (0, "hand"): 23, (0, "leg"): 6, (1, "hip"): 1, (0, "hip"): 2}
    split = make_split(write_labelled_folder(tmp_path, strata, copies=0, truncated=0), seed=5)
    for stratum, name, count, share, _ in stratum_deviations(split):
        assert abs(count - share) <= 1, f"{stratum} {name}: {count} images, share {share:.2f}"


def test_split_same_seed_identical(generated, generated_split):
    again = make_split(generated, seed=1234)
    assert again.entries == generated_split.entries


def test_split_different_seed_differs(generated, generated_split):
    other = make_split(generated, seed=99)
    assert [e.split for e in other.entries] != [e.split for e in generated_split.entries]


def test_split_marks_truncated(generated_split):
    truncated = [entry.image_id for entry in generated_split.entries if not entry.decodes_fully]
    assert truncated == [f"IMG{sum(LABELLED_STRATA.values()) - 1:07d}.jpg"]


def test_split_reads_csv_metadata(generated_split):
    entry = next(e for e in generated_split.entries if e.image_id == "IMG0000000.jpg")
    assert (entry.label, entry.region, entry.hardware) == (0, "hand", True)


def test_split_file_roundtrip(generated_split, tmp_path):
    path = tmp_path / "split.json"
    write_split(generated_split, path)
    loaded = read_split(path)
    assert loaded.entries == generated_split.entries
    assert loaded.root == generated_split.root


def test_split_file_root_override(generated_split, tmp_path):
    path = tmp_path / "split.json"
    write_split(generated_split, path)
    assert read_split(path, tmp_path).root == tmp_path.resolve()


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _nfd(text: str) -> str:
    return unicodedata.normalize("NFD", text)


def _split_with_paths(root: Path, relative_paths: list[str]) -> Split:
    entries = tuple(
        SplitEntry(f"id{index}", relative, index % 2, "hand", None, f"{index:064x}", True, "validation")
        for index, relative in enumerate(relative_paths)
    )
    return Split(root=root, seed=0, fractions=(0.7, 0.15, 0.15), entries=entries)


def _write_jpeg(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), (90, 90, 90)).save(path)
    return path


@pytest.mark.parametrize(("written", "on_disk"), [(_nfc, _nfd), (_nfd, _nfc)], ids=["nfc-split-nfd-copy", "nfd-split-nfc-copy"])
def test_split_path_other_normal_form(tmp_path, written, on_disk):
    names = ["Röntgen-Handgelenk.jpg", "Fraktur-Ellenbogen-élève.jpg"]
    split_path = tmp_path / "split.json"
    write_split(_split_with_paths(tmp_path / "original", [f"images/Fractured/{written(n)}" for n in names]), split_path)
    copy = tmp_path / "copy"
    disk_files = [_write_jpeg(copy / "images" / "Fractured" / on_disk(name)) for name in names]
    if (copy / "images" / "Fractured" / written(names[0])).exists():
        pytest.skip("this file system treats NFC and NFD names as the same name")

    split = read_split(split_path, copy)
    found = [split.path_of(entry) for entry in split.entries]

    assert found == [path.resolve() for path in disk_files]
    for path in found:
        assert load_pixels(path, (24, 24)).shape == (24, 24, 3)


def test_split_path_mixed_normal_forms(tmp_path):
    # The folder name is NFC on disk and the file name NFD, while the split records both in NFC.
    on_disk = _write_jpeg(tmp_path / _nfc("Übersicht") / _nfd("Röntgen.jpg"))
    split = _split_with_paths(tmp_path, [_nfc("Übersicht/Röntgen.jpg")])
    assert split.path_of(split.entries[0]) == on_disk


def test_split_path_missing_keeps_name(tmp_path):
    relative = _nfc("images/Fractured/Röntgen.jpg")
    split = _split_with_paths(tmp_path, [relative])
    assert split.path_of(split.entries[0]) == tmp_path / relative


def test_split_path_exact_name_first(tmp_path):
    # Both forms exist as two files: the name the split records wins.
    nfc_file = _write_jpeg(tmp_path / _nfc("Röntgen.jpg"))
    nfd_file = _write_jpeg(tmp_path / _nfd("Röntgen.jpg"))
    if nfc_file == nfd_file or len(list(tmp_path.iterdir())) != 2:
        pytest.skip("this file system treats NFC and NFD names as the same name")
    split = _split_with_paths(tmp_path, [_nfd("Röntgen.jpg"), _nfc("Röntgen.jpg")])
    assert [split.path_of(entry) for entry in split.entries] == [nfd_file, nfc_file]


def test_split_file_missing(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        read_split(tmp_path / "absent.json")


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.8, 0.2, 0.2), (1.0, 0.0, 0.0)])
def test_split_rejects_fractions(generated, fractions):
    with pytest.raises(UsageError, match="invalid split fractions"):
        make_split(generated, fractions=fractions)


def test_split_rejects_conflicting_labels(tmp_path):
    root = write_labelled_folder(tmp_path, {(1, "hand"): 2, (0, "hand"): 2}, copies=0, truncated=0)
    source = root / "images" / "Fractured" / "IMG0000002.jpg"
    (root / "images" / "Non_fractured" / "CLASH.jpg").write_bytes(source.read_bytes())
    with pytest.raises(UsageError, match="different labels"):
        make_split(root)


def test_cli_split_writes_file(generated, generated_split, tmp_path):
    output = tmp_path / "out" / "split.json"
    result = CliRunner().invoke(main, ["split", str(generated), "--output", str(output), "--seed", "1234"])
    assert result.exit_code == 0, result.output
    assert read_split(output).entries == generated_split.entries
    assert "validation" in result.output


def test_cli_split_fractions(generated, tmp_path):
    output = tmp_path / "split.json"
    result = CliRunner().invoke(main, ["split", str(generated), "-o", str(output), "--fractions", "0.5,0.25,0.25"])
    assert result.exit_code == 0, result.output
    assert json.loads(output.read_text())["fractions"] == [0.5, 0.25, 0.25]


@pytest.mark.parametrize("fractions", ["0.7,0.3", "a,b,c", "0.9,0.1,0.1", "nan,0.5,0.5"])
def test_cli_split_bad_fractions(generated, tmp_path, fractions):
    result = CliRunner().invoke(main, ["split", str(generated), "-o", str(tmp_path / "s.json"), "--fractions", fractions])
    assert result.exit_code == 2
    assert "fractions" in result.output


def test_cli_split_missing_folder(tmp_path):
    result = CliRunner().invoke(main, ["split", str(tmp_path / "absent"), "-o", str(tmp_path / "s.json")])
    assert result.exit_code == 2
    assert "not found" in result.output


def test_cli_split_positive_class(tmp_path):
    root = tmp_path / "data"
    for index, name in enumerate(("broken", "intact", "broken", "intact")):
        (root / name).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (index * 60, 0, 0)).save(root / name / f"scan{index}.jpg")
    output = tmp_path / "split.json"
    unnamed = CliRunner().invoke(main, ["split", str(root), "-o", str(output)])
    assert unnamed.exit_code == 2
    assert "--positive-class" in unnamed.output
    named = CliRunner().invoke(main, ["split", str(root), "-o", str(output), "--positive-class", "broken"])
    assert named.exit_code == 0, named.output
    labels = {entry.relative_path.split("/")[0]: entry.label for entry in read_split(output).entries}
    assert labels == {"broken": 1, "intact": 0}


def edited_split(generated_split, tmp_path, edit) -> Path:
    """Write ``generated_split`` to a file, apply ``edit`` to its JSON document and return the path."""
    path = tmp_path / "split.json"
    write_split(generated_split, path)
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))
    return path


def entry_of(document, image_id: str) -> dict:
    return next(entry for entry in document["entries"] if entry["image_id"] == image_id)


def rename_split(document):
    entry_of(document, "IMG0000000.jpg")["split"] = "valdation"


def add_entry_key(document):
    entry_of(document, "IMG0000000.jpg")["note"] = "checked"


def drop_entry_key(document):
    del entry_of(document, "IMG0000000.jpg")["sha256"]


def drop_entries(document):
    del document["entries"]


def add_document_key(document):
    document["comment"] = "by hand"


def move_one_copy(document):
    first, second = [e for e in document["entries"] if e["image_id"] in ("IMG0000000.jpg", "COPY0000.jpg")]
    second["split"] = next(name for name in SPLITS if name != first["split"])


def climb_out(document):
    entry_of(document, "IMG0000000.jpg")["relative_path"] = "../../etc/IMG0000000.jpg"


def absolute_path(document):
    entry_of(document, "IMG0000000.jpg")["relative_path"] = "/etc/IMG0000000.jpg"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (climb_out, "relative_path '../../etc/IMG0000000.jpg', expected a path inside the data folder"),
        (absolute_path, "relative_path '/etc/IMG0000000.jpg', expected a path inside the data folder"),
        (rename_split, "entry 'IMG0000000.jpg' has split 'valdation'"),
        (add_entry_key, "entry 'IMG0000000.jpg' has unknown key(s) note"),
        (drop_entry_key, "entry 'IMG0000000.jpg' lacks key(s) sha256"),
        (drop_entries, "missing key(s) entries"),
        (add_document_key, "unknown key(s) comment"),
        (move_one_copy, "byte-identical images"),
    ],
)
def test_split_file_invalid_rejected(generated_split, tmp_path, edit, message):
    path = edited_split(generated_split, tmp_path, edit)
    with pytest.raises(UsageError) as raised:
        read_split(path)
    assert f"split file {path} is invalid" in str(raised.value)
    assert message in str(raised.value)
    assert "edgefrac split DATA --output" in str(raised.value)


def test_split_file_invalid_exit_code(generated_split, tiny_int8_model, tmp_path):
    path = edited_split(generated_split, tmp_path, rename_split)
    result = CliRunner().invoke(main, ["evaluate", str(tiny_int8_model), "--split-file", str(path)])
    assert result.exit_code == 2, result.output
    assert "valdation" in result.output
    assert "Traceback" not in result.output


def test_split_matches_training_record(generated_split, tmp_path):
    from edgefrac.splitfile import check_training_record

    path = tmp_path / "split.json"
    write_split(generated_split, path)
    record = {
        "split_file_sha256": file_sha256(path),
        "split_ids_sha256": {"train": generated_split.ids_hash(generated_split.subset("train"))},
    }
    check_training_record(path, generated_split, record, "model.keras")


def test_split_other_file_warns(generated_split, tmp_path, caplog):
    from edgefrac.splitfile import check_training_record

    path = tmp_path / "split.json"
    write_split(generated_split, path)
    record = {
        "split_file_sha256": "0" * 64,
        "split_ids_sha256": {"train": generated_split.ids_hash(generated_split.subset("train"))},
    }
    check_training_record(path, generated_split, record, "model.keras")
    assert "differs from the one model.keras was trained with" in caplog.text


def test_split_other_train_ids_rejected(generated_split, generated, tmp_path):
    from edgefrac.splitfile import check_training_record

    other = make_split(generated, seed=99)
    path = tmp_path / "split.json"
    write_split(other, path)
    record = {"split_ids_sha256": {"train": generated_split.ids_hash(generated_split.subset("train"))}}
    with pytest.raises(UsageError, match="pass the --split-file the model was trained with"):
        check_training_record(path, other, record, "model.keras")


def test_split_marks_non_image_file(tmp_path, caplog):
    root = write_labelled_folder(tmp_path / "data", {(1, "hand"): 6, (0, "hand"): 6}, copies=0, truncated=1)
    (root / "images" / "Non_fractured" / "junk.png").write_text("not an image\n")
    split = make_split(root)
    left_out = sorted(entry.image_id for entry in split.entries if not entry.decodes_fully)
    assert left_out == ["IMG0000011.jpg", "junk.png"]
    assert "1 truncated images" in caplog.text
    assert "1 files do not decode as images" in caplog.text


def test_cli_split_non_image_file(tmp_path):
    root = write_labelled_folder(tmp_path / "data", {(1, "hand"): 6, (0, "hand"): 6}, copies=0, truncated=0)
    (root / "images" / "Fractured" / "junk.png").write_text("not an image\n")
    output = tmp_path / "split.json"
    result = CliRunner().invoke(main, ["split", str(root), "-o", str(output)])
    assert result.exit_code == 0, result.output
    junk = next(entry for entry in read_split(output).entries if entry.image_id == "junk.png")
    assert junk.decodes_fully is False


def test_cli_split_empty_class(tmp_path):
    root = write_labelled_folder(tmp_path / "data", {(1, "hand"): 6}, copies=0, truncated=0)
    (root / "images" / "Non_fractured").mkdir()
    output = tmp_path / "split.json"
    result = CliRunner().invoke(main, ["split", str(root), "-o", str(output)])
    assert result.exit_code == 2, result.output
    assert "no non-fractured image" in result.output
    assert not output.exists()


def test_split_warns_empty_split(tmp_path, caplog):
    root = write_labelled_folder(tmp_path / "data", {(1, "hand"): 3, (0, "hand"): 3}, copies=0, truncated=0)
    split = make_split(root)
    assert split.subset("test") == []
    assert "the test split has no decodable image" in caplog.text


def test_split_warns_missing_class(tmp_path, caplog):
    root = write_labelled_folder(tmp_path / "data", {(1, "hand"): 2, (0, "hand"): 8}, copies=0, truncated=0)
    split = make_split(root, fractions=(0.6, 0.2, 0.2))
    lacking = [name for name in SPLITS if {e.label for e in split.subset(name)} == {0}]
    assert lacking, "the fixture no longer leaves a split without fractured images"
    assert f"the {lacking[0]} split has no decodable fractured image" in caplog.text


def test_cli_split_unwritable_output(generated, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    output = blocker / "split.json"
    result = CliRunner().invoke(main, ["split", str(generated), "-o", str(output)])
    assert result.exit_code == 1, result.output
    assert f"cannot write split file {output}" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_fracatlas_no_id_in_two_splits(fracatlas_split):
    for image_id, names in splits_by(fracatlas_split, lambda e: e.image_id).items():
        assert len(names) == 1, f"{image_id} is in {sorted(names)}"


@pytest.mark.slow
def test_fracatlas_no_hash_in_two_splits(fracatlas_split):
    for content_hash, names in splits_by(fracatlas_split, lambda e: e.sha256).items():
        assert len(names) == 1, f"content {content_hash[:12]} is in {sorted(names)}"


@pytest.mark.slow
def test_fracatlas_has_duplicates(fracatlas_split):
    hashes = collections.Counter(entry.sha256 for entry in fracatlas_split.entries)
    assert max(hashes.values()) > 1


@pytest.mark.slow
def test_fracatlas_stratified(fracatlas_split):
    for stratum, name, count, share, largest_group in stratum_deviations(fracatlas_split):
        assert abs(count - share) <= largest_group, f"{stratum} {name}: {count} images, share {share:.2f}"


@pytest.mark.slow
def test_fracatlas_marks_truncated(fracatlas_split):
    truncated = sum(not entry.decodes_fully for entry in fracatlas_split.entries)
    assert truncated > 0
    assert all(entry.sha256 for entry in fracatlas_split.entries)
