"""The embedded model and its preprocessing: the demo photos must come out as ImageNet says."""

import sys

import pytest
import torch
import torchvision

from gradex import checkpoints, images, models

DEMO_TOP1 = {
    "chelsea.png": 285,  # Egyptian cat
    "coffee.png": 967,  # espresso
    "motorcycle_left.png": 665,  # moped
    "grace_hopper.jpg": 652,  # military uniform
}


def test_demo_photos_top1_with_the_embedded_model():
    bundle = models.load_model()
    photos = images.demo_photos()
    assert [p.name for p in photos] == list(DEMO_TOP1)
    x = torch.stack([bundle.preprocess(images.load_rgb(p)) for p in photos])
    assert x.shape == (4, 3, 224, 224)
    with torch.no_grad():
        top1 = bundle.model(x).argmax(1).tolist()
    assert top1 == list(DEMO_TOP1.values())
    assert [bundle.class_names[i] for i in top1] == [
        "Egyptian cat",
        "espresso",
        "moped",
        "military uniform",
    ]


def test_to_display_undoes_the_preprocessing():
    bundle = models.load_model()
    image = images.load_rgb(images.demo_photos()[1])
    shown = bundle.to_display(bundle.preprocess(image))
    assert shown.shape == (3, 224, 224) and shown.min() >= 0 and shown.max() <= 1
    # the espresso photo is mostly dark wood and cream: not a flat grey
    assert shown.std() > 0.1


def test_torchvision_model_with_local_weights(tmp_path):
    weights = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    bundle = models.load_model("resnet18", weights)
    assert bundle.class_names[285] == "Egyptian cat"
    assert not bundle.model.training


@pytest.mark.parametrize(
    "name, weights, error, words",
    [
        ("resnet18", None, ValueError, "needs a local weights file"),
        ("resnet18", "missing.pth", FileNotFoundError, "no such file"),
        ("efficientnet_lite0", "x.pth", ValueError, "brings its own weights"),
    ],
)
def test_bad_model_choices(name, weights, error, words):
    with pytest.raises(error, match=words):
        models.load_model(name, weights)


def test_unknown_torchvision_name(tmp_path):
    weights = tmp_path / "w.pth"
    torch.save({}, weights)
    with pytest.raises(ValueError, match="torchvision has no model named 'resnet7'"):
        models.load_model("resnet7", weights)


def test_torchvision_models_use_their_published_transform(tmp_path):
    weights = tmp_path / "effnet.pth"
    torch.save(torchvision.models.efficientnet_b0().state_dict(), weights)
    bundle = models.load_model("efficientnet_b0", weights)
    image = images.load_rgb(images.demo_photos()[0])
    x = bundle.preprocess(image)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    published = torchvision.models.EfficientNet_B0_Weights.IMAGENET1K_V1.transforms()
    torch.testing.assert_close(x, published(image))
    shown = bundle.to_display(x)
    assert shown.min() >= 0 and shown.max() <= 1 and shown.std() > 0.1


# Checkpoints as users have them (gradex.checkpoints): the weights inside must load, unchanged.


def _squeezenet(num_classes=1000):
    return torchvision.models.squeezenet1_1(num_classes=num_classes).eval()


def _save_checkpoint(path, model, form):
    state = model.state_dict()
    if form == "bare":
        torch.save(state, path)
    elif form == "model":
        torch.save({"model": state}, path)
    elif form == "state_dict with metadata":  # timm's train.py saves this shape
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        torch.save(
            {
                "epoch": 90,
                "arch": "squeezenet1_1",
                "state_dict": state,
                "optimizer": optimizer.state_dict(),
                "args": {"lr": 0.1, "batch_size": 256},
                "state_dict_ema": {k: v + 1 for k, v in state.items()},
            },
            path,
        )
    elif form == "model_state_dict":  # the PyTorch tutorials' checkpoint
        torch.save({"epoch": 3, "model_state_dict": state, "loss": 0.25}, path)
    elif form == "ema only":
        torch.save({"epoch": 3, "model_ema": state, "best_acc1": 71.5}, path)
    elif form == "DataParallel":
        torch.save(torch.nn.DataParallel(model).state_dict(), path)
    elif form == "torch.compile":
        torch.save(torch.compile(model).state_dict(), path)
    elif form == "DDP of a compiled model in a wrapper":
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}}, path)
    elif form == "safetensors":
        from safetensors.torch import save_file

        save_file(state, path)


CHECKPOINT_FORMS = [
    "bare",
    "model",
    "state_dict with metadata",
    "model_state_dict",
    "ema only",
    "DataParallel",
    "torch.compile",
    "DDP of a compiled model in a wrapper",
    "safetensors",
]


@pytest.mark.parametrize("form", CHECKPOINT_FORMS)
def test_checkpoints_as_users_have_them_load_their_weights(tmp_path, form):
    source = _squeezenet()
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pth")
    _save_checkpoint(path, source, form)
    loaded = models.load_model("squeezenet1_1", path).model
    for (name, mine), theirs in zip(
        loaded.state_dict().items(), source.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0, msg=name)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))


def test_a_safetensors_file_is_read_without_its_suffix(tmp_path):
    from safetensors.torch import save_file

    source = _squeezenet()
    path = tmp_path / "weights.bin"
    save_file(source.state_dict(), path)
    loaded = models.load_model("squeezenet1_1", path).model
    torch.testing.assert_close(loaded.features[0].weight, source.features[0].weight)


def test_a_checkpoint_with_two_unnamed_state_dicts_names_them(tmp_path):
    state = _squeezenet().state_dict()
    path = tmp_path / "two.pth"
    torch.save({"teacher": state, "student": state, "epoch": 1}, path)
    with pytest.raises(ValueError, match=r"--weights .*two.pth: .*several state dicts.*'teacher'"):
        models.load_model("squeezenet1_1", path)


# Every torchvision head kind: fc, classifier.N (Linear or a 1x1 conv), head, heads.head, and
# auxiliary classifiers beside the main one.
HEADS = [
    "resnet18",  # fc
    "squeezenet1_0",  # classifier.1, a convolution
    "mobilenet_v3_small",  # classifier.3
    "efficientnet_b0",  # classifier.1
    "densenet121",  # classifier
    "convnext_tiny",  # classifier.2
    "maxvit_t",  # classifier.5
    "swin_t",  # head
    "vit_b_16",  # heads.head
    "regnet_x_400mf",  # fc; its initialisation cannot run on the meta device
    "inception_v3",  # fc and AuxLogits.fc
    "googlenet",  # fc, aux1.fc2, aux2.fc2
    "mnasnet0_5",
    "shufflenet_v2_x0_5",
    "alexnet",
]


@pytest.mark.parametrize("name", HEADS)
def test_the_class_count_is_read_from_every_torchvision_head(name):
    try:
        with torch.device("meta"):
            fine_tuned = torchvision.models.get_model(name, weights=None, num_classes=10)
    except NotImplementedError:  # regnet's initialisation reads values
        fine_tuned = torchvision.models.get_model(name, weights=None, num_classes=10)
    default_state, default_classes = models._default_head(name)
    assert default_classes == 1000
    assert checkpoints.class_count(default_state, fine_tuned.state_dict(), 1000) == 10
    assert checkpoints.class_count(default_state, default_state, 1000) is None


def test_a_fine_tuned_model_is_built_with_its_class_count(tmp_path):
    source = torchvision.models.resnet18(num_classes=10).eval()
    weights = tmp_path / "finetuned.pth"
    torch.save({"model": source.state_dict(), "epoch": 12}, weights)
    bundle = models.load_model("resnet18", weights)
    assert bundle.class_names == [f"class {i}" for i in range(10)]
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x), source(x))


def test_weights_of_another_architecture_name_the_tensor_that_differs(tmp_path):
    weights = tmp_path / "r34.pth"
    torch.save(torchvision.models.resnet18().state_dict(), weights)
    with pytest.raises(ValueError, match=r"not weights for squeezenet1_1 \(\d+ missing"):
        models.load_model("squeezenet1_1", weights)
    state = _squeezenet().state_dict()
    state["features.0.weight"] = state["features.0.weight"][:, :1]  # a grey-input stem
    torch.save(state, weights)
    with pytest.raises(
        ValueError, match=r"'features.0.weight': \(64, 1, 3, 3\) in the file, \(64, 3, 3, 3\)"
    ):
        models.load_model("squeezenet1_1", weights)


# timm models by name: timm:NAME, weights from a local file, timm's own preprocessing.


def test_a_timm_model_by_name_uses_timm_preprocessing(tmp_path):
    timm = pytest.importorskip("timm")
    source = timm.create_model("test_resnet.r160_in1k", pretrained=False, num_classes=7).eval()
    weights = tmp_path / "test_resnet.pth"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, weights)
    bundle = models.load_model("timm:test_resnet.r160_in1k", weights)
    assert len(bundle.class_names) == 7 and bundle.input_size == 160
    config = timm.data.resolve_data_config(model=source)
    assert bundle.mean == tuple(config["mean"]) and bundle.std == tuple(config["std"])
    image = images.load_rgb(images.demo_photos()[0])
    x = bundle.preprocess(image)
    torch.testing.assert_close(x, timm.data.create_transform(**config)(image))
    assert x.shape == (3, 160, 160)
    torch.testing.assert_close(models.preprocess_for("timm:test_resnet.r160_in1k")(image), x)
    with torch.no_grad():
        torch.testing.assert_close(bundle.model(x[None]), source(x[None]))


@pytest.mark.parametrize(
    "name, words",
    [
        ("timm:test_resnt", "timm has no model named 'test_resnt'; did you mean timm:test_resnet"),
        ("timm:test_resnet.nope", "no pretrained tag 'nope' for test_resnet"),
    ],
)
def test_unknown_timm_names_are_refused_with_close_ones(name, words):
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match=words):
        models.check_model_name(name)


def test_timm_missing_names_its_pip_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # what `import timm` sees when not installed
    with pytest.raises(RuntimeError, match=r'needs timm: pip install "gradex\[timm\]"'):
        models.load_model("timm:resnet18", "w.pth")
