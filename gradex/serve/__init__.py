"""``gradex serve``: explanations as a model server speaking KServe's V1 and V2 protocols.

Needs the ``serve`` extra (``pip install "gradex[serve]"``: the KServe SDK and its web stack);
nothing here is imported by ``import gradex``.
"""

from .options import ServeOptions, add_arguments, from_args

__all__ = ["ServeOptions", "add_arguments", "from_args", "run_from_args"]


def run_from_args(args) -> int:
    try:
        import kserve  # noqa: F401 - only to say what to install when it is missing
    except ImportError as error:
        raise RuntimeError(
            f"gradex serve needs the serve extra: pip install 'gradex[serve]' ({error})"
        ) from error
    from .server import serve

    return serve(from_args(args))
