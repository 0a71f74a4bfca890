"""Getting slide files in safely: a streaming size limit, clean names, and import-root checks."""

from __future__ import annotations

import os
import re
import unicodedata
from pathlib import Path

from django.conf import settings
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler

SLIDE_EXTENSIONS = {
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".bif", ".svslide",
    ".czi", ".dcm", ".png", ".jpg", ".jpeg",
}


class SlideSizeLimitHandler(TemporaryFileUploadHandler):
    """Streams uploads to a temporary file and stops as soon as the size limit is passed.

    The declared Content-Length is checked first (a huge declared size is refused before any
    byte is stored), then the bytes actually received, since the header can lie. The view
    reads request.upload_too_large to tell the user why the file is missing.
    """

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        self.limit = settings.SLIDE_UPLOAD_MAX_BYTES
        self.received = 0
        # Form fields and multipart framing add a little to the body; allow 1 MB for them.
        self.declared_too_large = bool(content_length and content_length > self.limit + 1024 * 1024)
        return super().handle_raw_input(input_data, META, content_length, boundary, encoding)

    def new_file(self, *args, **kwargs):
        if self.declared_too_large:
            self.request.upload_too_large = True
            raise StopUpload(connection_reset=True)
        return super().new_file(*args, **kwargs)

    def receive_data_chunk(self, raw_data, start):
        self.received += len(raw_data)
        if self.received > self.limit:
            self.request.upload_too_large = True
            self.file.close()  # deletes the temporary file
            raise StopUpload(connection_reset=True)
        return super().receive_data_chunk(raw_data, start)


def human_size(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} TB"


_UNSAFE = re.compile(r"[^\w.\- ()+]")


def clean_file_name(name: str, max_length: int = 120) -> str:
    """A name safe to store on disk and show in a page, keeping the extension.

    Drops any folder part (`../`), control and unusual characters, and shortens long names
    from the middle so the extension survives.
    """
    name = unicodedata.normalize("NFKC", name).replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    name = _UNSAFE.sub("_", name).strip(" .") or "slide"
    stem, ext = os.path.splitext(name)
    ext = ext[:12]
    if len(name) > max_length:
        name = stem[: max_length - len(ext)] + ext
    return name


def display_name(name: str, max_length: int = 255) -> str:
    """The user's own file name for display: no folders, no control characters, bounded."""
    name = name.replace("\\", "/").split("/")[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return (name or "slide")[:max_length]


class ImportPathError(ValueError):
    """An import path that is not a readable file inside the lab's import folder."""


NOT_ENABLED = "Importing is not enabled on this server (SLIDE_IMPORT_ROOT is not set)."


def import_enabled() -> bool:
    return bool(settings.SLIDE_IMPORT_ROOT)


def import_root(lab) -> Path | None:
    """The lab's own import folder: its folder under SLIDE_IMPORT_ROOT (Lab.import_folder_name),
    resolved; None when importing is off. A lab lists and imports from here only."""
    if not import_enabled():
        return None
    share = Path(settings.SLIDE_IMPORT_ROOT).resolve()
    root = (share / lab.import_folder_name).resolve()
    if not root.is_relative_to(share):     # an admin's folder that leads out of the share
        raise ImportPathError("This lab's import folder is set outside the share; ask an admin to correct it.")
    return root


def _lab_root(lab) -> Path:
    root = import_root(lab)
    if root is None:
        raise ImportPathError(NOT_ENABLED)
    if not root.is_dir():
        raise ImportPathError(f"This lab's import folder ({lab.import_folder_name}) does not exist on the share "
                              "yet; ask an admin to create it.")
    return root


def resolve_import_path(relative: str, lab) -> Path:
    """The real path of a file inside the lab's import folder, or ImportPathError.

    The path is resolved (following symlinks) before the check, so `..`, absolute paths, another
    lab's folder and a link that points outside the folder are all refused the same way.
    """
    root = _lab_root(lab)
    if not relative or "\x00" in relative:
        raise ImportPathError("No file was chosen.")
    try:
        candidate = (root / relative.lstrip("/")).resolve() if not os.path.isabs(relative) else Path(relative).resolve()
        inside, exists = candidate.is_relative_to(root), candidate.is_file()
    except (OSError, ValueError) as exc:  # a name too long for the file system, a loop of links...
        raise ImportPathError("That file does not exist in the import folder, or its name cannot be read "
                              f"({exc.__class__.__name__}).") from exc
    if not inside:
        raise ImportPathError("That path is outside the lab's import folder and cannot be imported.")
    if not exists:
        raise ImportPathError("That file does not exist in the import folder.")
    return candidate


def list_import_folder(relative: str, lab) -> tuple[str, list[dict]]:
    """Entries of one folder under the lab's import folder (folders first), for the import browser."""
    root = _lab_root(lab)
    if "\x00" in relative:
        raise ImportPathError("That folder is outside the lab's import folder or does not exist.")
    folder = (root / relative.lstrip("/")).resolve()
    if not folder.is_relative_to(root) or not folder.is_dir():
        raise ImportPathError("That folder is outside the lab's import folder or does not exist.")
    entries = []
    for entry in sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower())):
        if entry.name.startswith("."):
            continue
        real = entry.resolve()
        if not real.is_relative_to(root):
            continue  # a link pointing out of the share is not shown at all
        rel = str(real.relative_to(root)) if entry.is_dir() else str(entry.relative_to(root))
        if entry.is_dir():
            entries.append({"name": entry.name, "path": rel, "is_dir": True})
        elif entry.suffix.lower() in SLIDE_EXTENSIONS:
            entries.append({"name": entry.name, "path": rel, "is_dir": False, "size": entry.stat().st_size})
    return str(folder.relative_to(root)) if folder != root else "", entries
