"""SRC in every form the issue names, read into the job's fixed order."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradex.dataset.sources import read_source


def _touch(root, *names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_an_image_folder_tree_gives_sorted_relative_ids_and_class_labels(tmp_path):
    _touch(
        tmp_path,
        "dog/b.jpg",
        "cat/a.PNG",
        "cat/z.webp",
        "cat/.hidden.jpg",
        "cat/notes.txt",
        "cat/a.gradex.png",
        ".cache/c.jpg",
    )
    items = read_source(tmp_path)
    assert [i.id for i in items] == ["cat/a.PNG", "cat/z.webp", "dog/b.jpg"]
    assert [i.label for i in items] == ["cat", "cat", "dog"]
    assert [i.index for i in items] == [0, 1, 2]
    assert items[0].path == str(tmp_path / "cat/a.PNG") and items[0].target is None


def test_a_folder_not_in_image_folder_layout_has_no_labels_and_is_walked_to_any_depth(tmp_path):
    _touch(tmp_path, "top.jpg", "a/b/c/deep.jpg")
    items = read_source(tmp_path)
    assert [i.id for i in items] == ["a/b/c/deep.jpg", "top.jpg"]
    assert all(i.label is None for i in items)


def test_a_text_file_of_paths_relative_to_itself_with_comments(tmp_path):
    listing = tmp_path / "lists" / "val.txt"
    listing.parent.mkdir()
    listing.write_text("# validation\nimages/1.jpg\n\n  /abs/2.jpg  \n")
    items = read_source(listing)
    assert [i.id for i in items] == ["images/1.jpg", "/abs/2.jpg"]
    assert items[0].path == str(listing.parent / "images/1.jpg")
    assert items[1].path == "/abs/2.jpg"


def test_a_parquet_table_with_ids_targets_and_labels(tmp_path):
    table = tmp_path / "val.parquet"
    pq.write_table(
        pa.table(
            {
                "path": ["a.jpg", "b.jpg", "c.jpg"],
                "id": ["x", "y", "z"],
                "target": [3, None, 7],
                "label": ["l", None, "m"],
            }
        ),
        table,
    )
    items = read_source(table)
    assert [(i.id, i.target, i.label) for i in items] == [
        ("x", 3, "l"),
        ("y", None, None),
        ("z", 7, "m"),
    ]


def test_csv_targets_may_be_ids_or_names(tmp_path):
    table = tmp_path / "val.csv"
    table.write_text("path,target\na.jpg,12\nb.jpg,tabby\nc.jpg,\n")
    assert [i.target for i in read_source(table)] == [12, "tabby", None]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p / "missing", "no such file or folder"),
        (lambda p: (p / "empty").mkdir() or p / "empty", "no images found"),
        (lambda p: (p / "e.txt").write_text("\n# nothing\n") and p / "e.txt", "no images found"),
        (lambda p: (p / "b.txt").write_bytes(b"\xff\xfe\x00bad") and p / "b.txt", "UTF-8"),
        (lambda p: (p / "t.csv").write_text("path\n\n") and p / "t.csv", "no images found"),
        (
            lambda p: (p / "t.csv").write_text("path,target\na.jpg,1.5\n") and p / "t.csv",
            "not a class id or name",
        ),
    ],
)
def test_a_source_without_images_is_refused_naming_src(tmp_path, make, message):
    src = make(tmp_path)
    with pytest.raises(ValueError, match=f"SRC .*{message}"):
        read_source(src)
