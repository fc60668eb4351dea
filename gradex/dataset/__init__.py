"""Whole datasets explained into a Parquet dataset: ``gradex explain-dataset SRC --out DST``,
or ``gradex.dataset.explain_dataset``; ``gradex.load_maps`` reads the maps back as tensors.

Two engines run the same job: the embedded local one (DataLoader workers decoding while the
explainer runs) and Ray Data (``--engine ray``, the ``ray`` extra) for a cluster. Needs pyarrow
(the ``dataset`` extra); nothing here is imported by ``import gradex`` until used.
"""

__all__ = ["Maps", "explain_dataset", "load_maps", "read_metadata"]


def __getattr__(name: str):
    # Imported on first use: these need pyarrow, and the command line imports this package's
    # parser for every gradex command, with or without the dataset extra.
    if name == "explain_dataset":
        from .run import explain_dataset

        return explain_dataset
    if name in ("Maps", "load_maps", "read_metadata"):
        from . import table

        return getattr(table, name)
    raise AttributeError(f"module 'gradex.dataset' has no attribute {name!r}")
