"""Reading the CLI's inputs."""

import pytest
from PIL import Image

from gradex import images


def test_load_rgb_converts_colour_modes(tmp_path):
    Image.new("RGBA", (5, 4), (10, 20, 30, 40)).save(tmp_path / "a.png")
    Image.new("P", (5, 4)).save(tmp_path / "p.png")
    assert images.load_rgb(tmp_path / "a.png").mode == "RGB"
    assert images.load_rgb(tmp_path / "p.png").size == (5, 4)


@pytest.mark.parametrize("mode", ["L", "1", "I;16"])
def test_grey_images_are_refused_by_name(tmp_path, mode):
    path = tmp_path / f"grey_{mode.replace(';', '')}.png"
    Image.new(mode, (5, 4)).save(path)
    with pytest.raises(images.ImageError, match=f"{path.name}: not an RGB image"):
        images.load_rgb(path)


def test_unreadable_files_are_refused_by_name(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(images.ImageError, match="notes.jpg: cannot read as an image"):
        images.load_rgb(path)
    with pytest.raises(images.ImageError, match="missing.png: cannot read"):
        images.load_rgb(tmp_path / "missing.png")


def test_folders_expand_to_their_images(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in images.expand_inputs([tmp_path])] == ["a.JPG", "b.png"]


def test_a_recursive_walk_is_sorted_skips_hidden_files_and_follows_no_folder_links(tmp_path):
    for name in ("b/z.png", "b/a.png", "a.jpg", ".git/x.png", "c/.thumb.png", "c/d/e.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "c" / "loop").symlink_to(tmp_path)  # a link back up the tree
    found = images.find_images([tmp_path], recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in found.files] == [
        "a.jpg",
        "b/a.png",
        "b/z.png",
        "c/d/e.webp",
    ]
    flat = images.find_images([tmp_path])
    assert [p.name for p in flat.files] == ["a.jpg"]
    assert flat.skipped_folders == 2  # b and c; a hidden .git is no one's input
