"""Weights files as users have them, read into a plain state dict without running any code.

A file may be a bare state dict, or a training checkpoint holding one beside metadata
(``{"model": sd, "epoch": 90, "optimizer": ...}``, timm's ``{"state_dict": sd, "state_dict_ema":
..., "args": ...}``), saved from a DistributedDataParallel or DataParallel model (every key starts
with ``module.``) or a ``torch.compile``'d one (``_orig_mod.``), or a ``.safetensors`` file.
Pickles are read with ``weights_only=True`` only: a whole pickled model is refused, never built.
"""

from __future__ import annotations

import pickle
import re
import struct
from pathlib import Path

import torch

# Where training scripts put the weights, in the order they are tried: the plain weights before
# an exponential moving average of them (timm's own loader prefers the plain ones too).
WRAPPER_KEYS = (
    "state_dict",
    "model_state_dict",
    "model",
    "module",
    "net",
    "network",
    "state_dict_ema",
    "model_ema",
    "ema",
)
# Added to every key by DistributedDataParallel / DataParallel, and by torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SAVE_A_STATE_DICT = "save one with torch.save(model.state_dict(), PATH)"


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def _looks_like_torch_save(path: Path) -> bool:
    """torch.save writes a zip archive; older files are a bare pickle (protocol 2+)."""
    with open(path, "rb") as file:
        head = file.read(4)
    return head.startswith((b"PK\x03\x04", b"\x80"))


def _looks_like_safetensors(path: Path) -> bool:
    """A safetensors file starts with its JSON header's length (8 bytes, little-endian), then
    the header itself."""
    with open(path, "rb") as file:
        head = file.read(9)
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return head[8:9] == b"{" and 8 + length <= path.stat().st_size


def _read_safetensors(path: Path) -> dict:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError as error:
        raise RuntimeError(
            f'--weights {path}: a safetensors file needs safetensors: pip install "gradex[timm]"'
            " (or pip install safetensors)"
        ) from error
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(
            f"--weights {path}: cannot read as safetensors ({_first_line(error)})"
        ) from error


def _refuse_pickled_objects(path: Path, error: pickle.UnpicklingError) -> ValueError:
    # Torch's message runs over many lines and suggests allow-listing the class; gradex never
    # does that, so keep only the name of what was found and say how to save weights instead.
    found = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f" ({found.group(1)})" if found else ""
    return ValueError(
        f"--weights {path}: holds Python objects beyond tensors{what}, which gradex never "
        "unpickles (they can run code); a whole model saved with torch.save(model)? Save its "
        "weights instead: torch.save(model.state_dict(), PATH)"
    )


def _read_file(path: Path):
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        return _read_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not _looks_like_torch_save(path):
            raise ValueError(
                f"--weights {path}: not a weights file saved with torch.save or safetensors"
            ) from error
        raise _refuse_pickled_objects(path, error) from error
    except Exception as error:  # empty, truncated, a zip of something else, ...
        what = "is empty" if path.stat().st_size == 0 else "cannot read as torch weights"
        raise ValueError(f"--weights {path}: {what} ({_first_line(error)})") from error


def _is_state_dict(value) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items()
    )


def _unwrap(path: Path, value, depth: int = 0) -> dict:
    """The state dict inside a checkpoint: the value itself, the first of WRAPPER_KEYS that holds
    one, or the only entry that is one."""
    if _is_state_dict(value):
        return value
    if not isinstance(value, dict):
        raise ValueError(
            f"--weights {path}: holds a {type(value).__name__}, not a state dict "
            f"({_SAVE_A_STATE_DICT})"
        )
    if depth < 2:
        for key in WRAPPER_KEYS:
            if isinstance(value.get(key), dict):
                try:
                    return _unwrap(path, value[key], depth + 1)
                except ValueError:
                    continue
    holding = [k for k, v in value.items() if _is_state_dict(v) and v]
    if len(holding) == 1:
        return value[holding[0]]
    keys = ", ".join(repr(k) for k in list(value)[:8])
    if holding:
        raise ValueError(
            f"--weights {path}: a checkpoint holding several state dicts "
            f"({', '.join(map(repr, holding))}) and none under the usual keys "
            f"({', '.join(WRAPPER_KEYS)}); save the one to explain alone ({_SAVE_A_STATE_DICT})"
        )
    raise ValueError(
        f"--weights {path}: a dict with keys {keys}, none of them a state dict "
        f"({_SAVE_A_STATE_DICT})"
    )


def strip_wrapper_prefixes(state: dict) -> dict:
    """Keys without the ``module.`` / ``_orig_mod.`` prefix that every one of them carries
    (also nested: DDP around a compiled model)."""
    stripped = True
    while state and stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix) :]: v for k, v in state.items()}
                stripped = True
    return state


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a local weights file (see the module's docstring for the forms read).
    Raises ValueError naming ``--weights`` for anything else."""
    path = Path(path)
    return strip_wrapper_prefixes(_unwrap(path, _read_file(path)))


def class_count(model_state: dict, weights: dict, default_classes: int) -> int | None:
    """The class count a fine-tuned checkpoint was trained for, read from its classifier: the
    tensors whose first dimension is ``default_classes`` in a model built with the default head
    (``fc``, ``classifier.N``, ``head``, ``heads.head``, an auxiliary classifier...) and differs
    only there in ``weights``. None when nothing says so (same count, or no agreement)."""
    counts = {
        weights[key].shape[0]
        for key, tensor in model_state.items()
        if tensor.dim() >= 1
        and tensor.shape[0] == default_classes
        and isinstance(weights.get(key), torch.Tensor)
        and weights[key].dim() == tensor.dim()
        and weights[key].shape[1:] == tensor.shape[1:]
        and weights[key].shape[0] != default_classes
    }
    return counts.pop() if len(counts) == 1 else None
