"""Usage mistakes end in one ``gradex: error: ...`` line naming the argument, exit status 2, and
no traceback; a weights file is never unpickled beyond tensors."""

import os

import pytest
import torch
from PIL import Image

from gradex import cli


class _Payload:
    """Unpickling this runs code: os.mkdir(path)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "a.jpg"
    Image.new("RGB", (64, 64), (90, 120, 200)).save(path)
    return path


def _run(capsys, *args):
    """(exit status, the one stderr line) of ``gradex ARGS``."""
    code = cli.main(list(map(str, args)))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradex: error: "), err
    return code, lines[0]


def test_a_pickle_with_code_in_it_is_refused_and_never_run(tmp_path, capsys, image):
    evil = tmp_path / "evil.pth"
    ran = tmp_path / "PAYLOAD_RAN"
    torch.save({"state_dict": _Payload(ran)}, evil)
    out = tmp_path / "out"
    code, line = _run(
        capsys, "explain", image, "--model", "resnet18", "--weights", evil, "--out", out
    )
    assert code == 2 and f"--weights {evil}: holds Python objects beyond tensors" in line
    assert not ran.exists()


@pytest.mark.parametrize("kind", ["empty", "an image", "a list", "another model's"])
def test_weights_that_are_no_state_dict_are_usage_errors(tmp_path, capsys, image, kind):
    weights = tmp_path / "w.pth"
    if kind == "empty":
        weights.write_bytes(b"")
    elif kind == "an image":
        weights.write_bytes(image.read_bytes())
    elif kind == "a list":
        torch.save([torch.zeros(2)], weights)
    else:
        torch.save({"fc.weight": torch.zeros(3, 4)}, weights)
    args = ["explain", image, "--model", "resnet18", "--weights", weights]
    code, line = _run(capsys, *args, "--out", tmp_path / "out")
    assert code == 2 and f"--weights {weights}: " in line


def test_the_meta_device_is_refused_by_name(tmp_path, capsys, image):
    code, line = _run(capsys, "explain", image, "--device", "meta", "--out", tmp_path / "out")
    assert code == 2 and line.startswith("gradex: error: --device meta: ")
    assert "cpu or cuda" in line


def test_an_unknown_model_is_named_with_the_known_ones(tmp_path, capsys, image):
    code, line = _run(capsys, "explain", image, "--model", "nonexistent", "--out", tmp_path / "o")
    assert code == 2 and "--model 'nonexistent': unknown model" in line
    assert "efficientnet_lite0 (embedded" in line and "resnet50" in line and "vgg16" in line
    assert "weights" not in line.split("known:")[0]
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    code, line = _run(
        capsys, "explain", image, "--model", "resnet81", "--weights", weights, "--out", tmp_path
    )
    assert code == 2 and "unknown model" in line and "did you mean resnet18" in line
