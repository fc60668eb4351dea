"""Where the command line writes: output folders checked before any work is done, and output files
that never land on an input or on a file gradex did not write.

``gradex explain`` writes ``<stem>.gradex.png`` per image (``<stem>.gradex.npz`` with
``--save-maps``) and ``results.json``. A file already at one of those names is replaced only when
gradex wrote it: a panel carries a gradex mark in its PNG header, a maps file in its zip comment, a
report is a gradex report. Panels and maps files that the previous report in the folder lists and
this run did not write again are removed at the end (when gradex wrote them): the folder then
holds this run's outputs, not stale pictures of inputs that have changed. Inputs are never
replaced, whatever their name; a name that is taken gets a number (``x_2.gradex.png``). Files are
written whole to a temporary name and then renamed, so a run that dies leaves no half-written
panel and never writes through a link.

``gradex evaluate`` and ``gradex bench`` write fixed names into their ``--out`` (a
:class:`ReportFolder`): the same rule, except that a name taken by a file gradex did not write
stops the run before any work instead of being numbered around.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import stat
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

PANEL_SUFFIX = ".gradex.png"
MAPS_SUFFIX = ".gradex.npz"
REPORT_NAME = "results.json"
# A gradex maps file is an NPZ (a zip) whose archive comment starts with this.
_NPZ_MARK = b"gradex "
# Keys every gradex explain report has; a results.json without them is someone else's file.
_REPORT_KEYS = {"model", "method", "images", "skipped", "timings"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_IHDR_END = len(_PNG_SIGNATURE) + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, data, CRC


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


# A tEXt chunk right after IHDR, keyword "gradex", text saying what wrote it: PIL and every viewer
# read past it; gradex finds it at a fixed offset without decoding anything.
_MARK_START = b"tEXtgradex\x00"  # the chunk's type and keyword, after its length
# What matplotlib puts in the same place: gradex's figures before they carried the mark.
_MATPLOTLIB_START = b"tEXtSoftware\x00Matplotlib"


def _first_line(error: OSError) -> str:
    return error.strerror or (str(error).splitlines() or [type(error).__name__])[0]


def _prepare_dir(folder: Path, subject: str) -> None:
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{subject}: exists and is not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as error:
        raise ValueError(
            f"{subject}: cannot create the folder: part of its path is a file"
        ) from error
    except OSError as error:
        raise ValueError(f"{subject}: cannot create the folder ({_first_line(error)})") from error
    try:  # os.access is not enough: root passes it, and it knows nothing of read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".gradex-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise ValueError(
            f"{subject}: cannot write in this folder ({_first_line(error)})"
        ) from error


def prepare_out_dir(path: Path, option: str = "--out") -> Path:
    """Create ``path`` (and its parents) and check that files can be created in it, so a command
    fails before its work, not after. Raises ValueError naming ``option``."""
    _prepare_dir(path, f"{option} {path}")
    return path


def prepare_out_file(path: Path, option: str) -> Path:
    """Check, before the work, that ``path`` can be written: its folder is created and writable,
    and ``path`` is not a folder."""
    if path.is_dir():
        raise ValueError(f"{option} {path}: is a folder; give a file name")
    _prepare_dir(path.parent, f"{option} {path}: its folder {path.parent}")
    return path


def _is_regular(path: Path) -> bool:
    """A regular file, not a link (to one) or anything else: only those are ever replaced."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _png_chunk_after_header(path: Path, length: int) -> bytes:
    """The first ``length`` bytes of the chunk that follows IHDR, after its length field; b""
    when ``path`` is no regular PNG file."""
    if not _is_regular(path):
        return b""
    try:
        with open(path, "rb") as file:
            head = file.read(_IHDR_END + 4 + length)
    except OSError:
        return b""
    return head[_IHDR_END + 4 :] if head.startswith(_PNG_SIGNATURE) else b""


def is_gradex_png(path: Path) -> bool:
    """Whether ``path`` is a regular file that starts as a PNG gradex wrote does (its mark): an
    explain panel, an evaluate figure or a bench plot."""
    return _png_chunk_after_header(path, len(_MARK_START)) == _MARK_START


def is_gradex_npz(path: Path) -> bool:
    """Whether ``path`` is a regular file holding a zip archive that gradex marked as its own
    (its comment): a maps file of ``gradex explain --save-maps``."""
    if not _is_regular(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.comment.startswith(_NPZ_MARK)
    except (OSError, zipfile.BadZipFile):
        return False


def mark_npz(npz: bytes, what: str) -> bytes:
    """The NPZ (zip) bytes with gradex's mark, saying ``what`` it is, as the archive comment;
    numpy reads the arrays as before."""
    buffer = io.BytesIO(npz)
    with zipfile.ZipFile(buffer, "a") as archive:
        archive.comment = _NPZ_MARK + what.encode("latin-1")
    return buffer.getvalue()


def is_matplotlib_png(path: Path) -> bool:
    """Whether ``path`` is a PNG that matplotlib saved (and nothing marked it since). gradex's
    figures were such files before they carried gradex's mark."""
    return _png_chunk_after_header(path, len(_MATPLOTLIB_START)) == _MATPLOTLIB_START


def is_gradex_json(path: Path, keys: set[str]) -> bool:
    """Whether ``path`` is a regular file holding a JSON object with (at least) ``keys``."""
    if not _is_regular(path):
        return False
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and record.keys() >= keys


def is_gradex_report(path: Path) -> bool:
    """Whether ``path`` is a regular file holding a gradex explain report."""
    return is_gradex_json(path, _REPORT_KEYS)


def is_gradex_markdown(path: Path, title: str) -> bool:
    """Whether ``path`` is a regular file whose first line starts with ``title`` (the heading
    gradex writes first)."""
    if not _is_regular(path):
        return False
    try:
        with open(path, "rb") as file:
            head = file.read(len(title.encode()))
    except OSError:
        return False
    return head == title.encode()


def mark_png(png: bytes, what: str) -> bytes:
    """The PNG with gradex's mark (saying ``what`` it is) inserted after its header; the pixels
    are untouched."""
    if not png.startswith(_PNG_SIGNATURE) or png[12:16] != b"IHDR":
        raise ValueError("not a PNG with an IHDR chunk first")
    mark = _png_chunk(b"tEXt", b"gradex\x00" + what.encode("latin-1"))
    return png[:_IHDR_END] + mark + png[_IHDR_END:]


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to a new temporary file next to ``path``, then rename it over ``path``: the
    rename replaces the name, so a link at ``path`` is replaced, never written through."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # O_EXCL: never opens an existing file; mode 0o666 less the umask, as open() would give.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class ExplainOutput:
    """The output folder of one ``gradex explain`` run: checked when made, before any work."""

    # What each kind of per-image output is called and how gradex recognises its own.
    _KINDS = {"panel": (PANEL_SUFFIX, is_gradex_png), "maps": (MAPS_SUFFIX, is_gradex_npz)}

    def __init__(self, folder: Path, inputs: list[Path]):
        self.folder = prepare_out_dir(folder)
        self.report_path = folder / REPORT_NAME
        # The same file may be named two ways (links, a case-insensitive disk): compare identities.
        self._inputs = {identity for identity in map(_identity, inputs) if identity is not None}
        self._taken: set[str] = set()
        self._written: set[str] = set()
        if not self._may_replace(self.report_path, is_gradex_report):
            raise ValueError(
                f"--out {folder}: holds a {REPORT_NAME} that gradex did not write (or one of the "
                "inputs); gradex will not replace it: choose another --out folder"
            )
        self._previous = self._outputs_listed_in(self.report_path)

    @staticmethod
    def _outputs_listed_in(report_path: Path) -> set[str]:
        """The per-image files a gradex report names (bare names in its folder only)."""
        if not os.path.lexists(report_path):
            return set()
        try:
            images = json.loads(report_path.read_text()).get("images", [])
        except (OSError, UnicodeDecodeError, ValueError, AttributeError):
            return set()
        names = set()
        for record in images if isinstance(images, list) else []:
            for kind in ExplainOutput._KINDS:
                name = record.get(kind) if isinstance(record, dict) else None
                if isinstance(name, str) and name and Path(name).name == name:
                    names.add(name)
        return names

    def _may_replace(self, path: Path, written_by_gradex) -> bool:
        if not os.path.lexists(path):
            return True
        return _identity(path) not in self._inputs and written_by_gradex(path)

    def paths_for(self, source: Path, kinds: tuple[str, ...] = ("panel",)) -> dict[str, Path]:
        """Names for the outputs of ``source`` (``kinds`` among "panel" and "maps"):
        ``<stem>.gradex.png`` and ``<stem>.gradex.npz``, numbered alike (``<stem>_2...``) when
        any of them is taken in this run, by an input, or by a file gradex did not write."""
        n = 1
        while True:
            stem = source.stem if n == 1 else f"{source.stem}_{n}"
            names = {kind: stem + self._KINDS[kind][0] for kind in kinds}
            if all(
                name not in self._taken
                and self._may_replace(self.folder / name, self._KINDS[kind][1])
                for kind, name in names.items()
            ):
                self._taken.update(names.values())
                return {kind: self.folder / name for kind, name in names.items()}
            n += 1

    def panel_path(self, source: Path) -> Path:
        """A name for the panel of ``source`` (see :meth:`paths_for`)."""
        return self.paths_for(source)["panel"]

    def write_panel(self, path: Path, png: bytes) -> None:
        write_atomically(path, mark_png(png, "explain panel"))
        self._written.add(path.name)

    def write_maps(self, path: Path, npz: bytes) -> None:
        write_atomically(path, mark_npz(npz, "explain maps"))
        self._written.add(path.name)

    def remove_stale(self) -> list[str]:
        """Remove the panels and maps files that the folder's previous report listed and this run
        did not write again, when gradex wrote them and they are no input; their names."""
        removed = []
        for name in sorted(self._previous - self._written):
            path = self.folder / name
            recognise = next(
                (test for suffix, test in self._KINDS.values() if name.endswith(suffix)), None
            )
            if recognise is not None and self._may_replace(path, recognise) and path.exists():
                path.unlink()
                removed.append(name)
        return removed

    def write_report(self, report: dict) -> None:
        write_atomically(self.report_path, (json.dumps(report, indent=2) + "\n").encode())


class ReportFolder:
    """The ``--out`` folder of one ``gradex evaluate`` or ``gradex bench`` run and the names it
    writes there, checked when made, before any work: the folder is created and writable, and no
    name holds a file gradex did not write. ``files`` maps each name to the test that tells an
    earlier gradex output (replaced) from someone else's file (the run stops)."""

    def __init__(
        self, folder: Path, files: dict[str, Callable[[Path], bool]], option: str = "--out"
    ):
        self.folder = prepare_out_dir(folder, option)
        for name, written_by_gradex in files.items():
            path = folder / name
            if os.path.lexists(path) and not written_by_gradex(path):
                raise ValueError(
                    f"{option} {folder}: holds a {name} that gradex did not write; gradex will "
                    f"not replace it: move it or choose another {option} folder"
                )
        self.paths = {name: folder / name for name in files}

    def write(self, name: str, data: bytes) -> Path:
        """Write one of the checked names whole (a temporary file, then a rename)."""
        path = self.paths[name]
        write_atomically(path, data)
        return path


def report_folder(
    folder: Path,
    *,
    json_name: str,
    json_keys: set[str],
    markdown_name: str,
    title: str,
    figures: list[str],
) -> ReportFolder:
    """The ``--out`` folder of a report made of one JSON record (with ``json_keys``), one
    markdown page (starting with ``title``) and ``figures``. A figure from before gradex marked
    its PNGs counts as gradex's when matplotlib saved it and the JSON beside it is gradex's."""

    def is_record(path: Path) -> bool:
        return is_gradex_json(path, json_keys)

    def is_figure(path: Path) -> bool:
        return is_gradex_png(path) or (is_matplotlib_png(path) and is_record(folder / json_name))

    return ReportFolder(
        folder,
        {
            json_name: is_record,
            markdown_name: lambda path: is_gradex_markdown(path, title),
            **dict.fromkeys(figures, is_figure),
        },
    )
