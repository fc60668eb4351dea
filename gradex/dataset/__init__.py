"""Whole datasets explained into a Parquet dataset: ``gradex explain-dataset SRC --out DST``,
or ``gradex.dataset.explain_dataset``; ``gradex.load_maps`` reads the maps back as tensors.

Two engines run the same job: the embedded local one (DataLoader workers decoding while the
explainer runs) and Ray Data (``--engine ray``, the ``ray`` extra) for a cluster. Needs pyarrow
(the ``dataset`` extra); nothing here is imported by ``import gradex`` until used.
"""

from .run import explain_dataset
from .table import Maps, load_maps, read_metadata

__all__ = ["Maps", "explain_dataset", "load_maps", "read_metadata"]
