"""Usage mistakes end in one ``gradex: error: ...`` line naming the argument, exit status 2, and
no traceback; a weights file is never unpickled beyond tensors."""

import os

import pytest
import torch
import torchvision
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


class _TinyNet(torch.nn.Module):
    """A user's own model class; unpickling it would call __setstate__, which leaves a mark."""

    def __init__(self, mark):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.mark = str(mark)

    def __setstate__(self, state):
        os.mkdir(state["mark"])
        super().__setstate__(state)


@pytest.mark.parametrize("kind", ["torchvision", "own class"])
def test_a_whole_pickled_model_is_refused_with_what_to_do(tmp_path, capsys, image, kind):
    weights = tmp_path / "model.pth"
    ran = tmp_path / "UNPICKLED"
    model = torchvision.models.resnet18() if kind == "torchvision" else _TinyNet(ran)
    torch.save(model, weights)  # the whole model, not its state dict
    args = ["explain", image, "--model", "resnet18", "--weights", weights]
    code, line = _run(capsys, *args, "--out", tmp_path / "out")
    assert code == 2 and f"--weights {weights}: holds Python objects beyond tensors" in line
    assert "torch.save(model.state_dict(), PATH)" in line
    assert ("torchvision.models.resnet.ResNet" if kind == "torchvision" else "_TinyNet") in line
    assert "safe_globals" not in line  # never advise trusting the pickle
    assert not ran.exists()


@pytest.mark.parametrize(
    "target, words",
    [
        ("1000", "--target 1000: out of range; class ids run from 0 to 999"),
        ("tabby cat", "--target 'tabby cat': no class of this name; did you mean 'tabby' (281)"),
        (
            "CARDIGAN",
            "--target 'CARDIGAN': 2 classes have this name, 'Cardigan' (264), 'cardigan' (474); "
            "give the id or the name as spelt",
        ),
    ],
)
def test_a_bad_target_is_refused_by_name(tmp_path, capsys, image, target, words):
    code, line = _run(capsys, "explain", image, "--target", target, "--out", tmp_path / "out")
    assert code == 2 and words in line


def test_labels_that_do_not_match_the_model_are_refused(tmp_path, capsys, image):
    labels = tmp_path / "labels.txt"
    labels.write_text("cat\ndog\n")
    code, line = _run(capsys, "explain", image, "--labels", labels, "--out", tmp_path / "out")
    assert code == 2
    assert f"--labels {labels}: 2 class names, but the model has 1000 classes" in line
