"""Class names from a user's file and targets given by name."""

import json

import pytest

from gradex import labels

NAMES = ["cat", "dog", "Crane", "crane bird", "hot dog"]


@pytest.mark.parametrize(
    "file_name, text",
    [
        ("labels.txt", "cat\ndog\nCrane\ncrane bird\nhot dog\n\n"),
        ("labels.txt", "\ufeffcat\r\ndog\r\nCrane\r\ncrane bird\r\nhot dog"),  # Windows, BOM
        ("labels.json", json.dumps(NAMES)),
        ("classes.json", json.dumps({str(i): n for i, n in reversed(list(enumerate(NAMES)))})),
        ("names", json.dumps(NAMES)),  # JSON without the suffix
    ],
)
def test_labels_files_in_every_form_give_the_names_in_id_order(tmp_path, file_name, text):
    path = tmp_path / file_name
    path.write_bytes(text.encode())
    assert labels.read_labels(path) == NAMES


@pytest.mark.parametrize(
    "text, words",
    [
        ("cat\n\ndog\n", "line 2 is blank"),
        ("", "no class names"),
        ('{"0": "cat", "2": "dog"}', "class ids must run from 0 to 1; 1 is missing"),
        ('{"a": "cat"}', "keys must be class ids"),
        ("[1, 2]", "a JSON list of class names"),
        ("[cat", "not valid JSON"),
    ],
)
def test_bad_labels_files_are_refused_by_flag(tmp_path, text, words):
    path = tmp_path / "labels.txt"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"--labels {path}: .*{words}"):
        labels.read_labels(path)


def test_a_missing_or_unreadable_labels_file_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"--labels .*missing.txt: No such file"):
        labels.read_labels(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"--labels .*: Is a directory"):
        labels.read_labels(tmp_path)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"--labels .*latin1.txt: not UTF-8 text"):
        labels.read_labels(tmp_path / "latin1.txt")


def test_the_label_count_must_match_the_model(tmp_path):
    with pytest.raises(ValueError, match="5 class names, but the model has 10 classes"):
        labels.check_label_count("l.txt", NAMES, 10)


@pytest.mark.parametrize(
    "target, expected",
    [(None, None), ("3", 3), (4, 4), ("HOT DOG", 4), ("crane", 2), (" dog ", 1)],
)
def test_targets_by_id_or_by_name_in_any_case(target, expected):
    assert labels.resolve_target(target, NAMES) == expected


@pytest.mark.parametrize(
    "target, words",
    [
        ("5", "--target 5: out of range; class ids run from 0 to 4"),
        ("-1", "--target -1: out of range"),
        ("hotdog", "no class of this name; did you mean 'hot dog' \\(4\\)"),
        ("zebra", "no class of this name; give a class id"),
    ],
)
def test_unknown_targets_are_refused_with_close_names(target, words):
    with pytest.raises(ValueError, match=words):
        labels.resolve_target(target, NAMES)


def test_a_name_two_classes_share_but_for_case_needs_the_exact_spelling():
    names = ["Cardigan", "cardigan", "tabby"]
    assert labels.resolve_target("Cardigan", names) == 0
    assert labels.resolve_target("cardigan", names) == 1
    with pytest.raises(ValueError, match=r"2 classes have this name, 'Cardigan' \(0\)"):
        labels.resolve_target("CARDIGAN", names)
