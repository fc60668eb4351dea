"""gradex: Gradual Extrapolation saliency maps for convolutional networks.

    import gradex
    explainer = gradex.Explainer(model, method="gradcam")
    exp = explainer(x)                      # exp.saliency: (B,1,H,W) in [0,1]
    sal = gradex.extrapolate(heatmap, activations)
    fast = explainer.static(x)              # fixed shape: one CUDA graph replay per call
    maps = gradex.load_maps("out/", ids=[...])   # maps of a `gradex explain-dataset` output

Importing gradex compiles nothing and touches no GPU.
"""

from . import reference
from .explainer import PAPER_OPTIONS, Capture, Explainer, Explanation
from .ops import backends, extrapolate
from .static import StaticExplainer

__version__ = "0.1.0"
__all__ = [
    "Capture",
    "Explainer",
    "Explanation",
    "PAPER_OPTIONS",
    "StaticExplainer",
    "backends",
    "extrapolate",
    "load_maps",
    "reference",
    "__version__",
]


def __getattr__(name: str):
    # load_maps needs pyarrow (the dataset extra): imported on first use, not by `import gradex`.
    if name == "load_maps":
        from .dataset import load_maps

        return load_maps
    raise AttributeError(f"module 'gradex' has no attribute {name!r}")
