"""The embedded model and its preprocessing: the demo photos must come out as ImageNet says."""

import pytest
import torch
import torchvision

from gradex import images, models

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
