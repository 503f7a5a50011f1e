"""Downloads checked against their md5 before use, and archives extracted member by member.

* :func:`_fetch` is reslab's only network access (tests replace it). :func:`_download` fetches
  to a temporary name, compares the md5 with the published one and only then renames the file
  into place, so a wrong or truncated download is deleted and never read.
* :func:`_safe_extract` unpacks regular files and folders only: absolute, drive-letter and
  ``..`` paths, symbolic and hard links, devices and FIFOs are refused (the tar path traversal
  of CVE-2007-4559; ``tarfile``'s own ``filter=``, PEP 706, exists only in newer Pythons), and
  the total size is capped. :func:`_extract_folder` extracts into a private folder and renames
  the result into place, so no half-extracted folder is ever mistaken for a complete one.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import tarfile
import tempfile
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from reslab.errors import DataError

log = logging.getLogger(__name__)


def _fetch(url: str, dest: Path) -> None:
    """Download ``url`` into ``dest``. The only network access in reslab; tests replace it."""
    request = urllib.request.Request(url, headers={"User-Agent": "reslab"})
    with urllib.request.urlopen(request, timeout=60) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ensure_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"cannot create the data folder {folder}: {exc.strerror or exc}; "
            "pass --data-dir (data_dir= in Python) or set RESLAB_DATA to a writable folder"
        ) from exc


def _download(url: str, folder: Path, filename: str, md5: str) -> Path:
    """Download to a temporary name, check the md5, then rename to ``folder/filename``."""
    _ensure_dir(folder)
    final = folder / filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".part", dir=folder)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        log.info("downloading %s to %s", url, final)
        try:
            _fetch(url, tmp)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise DataError(
                f"could not download {url} ({exc}); download it by hand and save it as "
                f"{final}, or point --data-dir (data_dir= in Python) or RESLAB_DATA at a folder "
                "that has it"
            ) from exc
        actual = _md5(tmp)
        if actual != md5:
            raise DataError(
                f"checksum mismatch for {filename} from {url}: expected md5 {md5}, got {actual}; "
                f"the download was deleted, try again or download it by hand into {folder}"
            )
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


# The CIFAR archives unpack to about 180 MB; the cap stops a bogus archive filling the disk.
_MAX_EXTRACT_BYTES = 2 << 30


def _safe_extract(archive: Path, dest: Path) -> None:
    """Extract regular files and folders of ``archive`` under ``dest``; refuse anything else.

    Done by hand rather than with ``tarfile.extractall`` (whose ``filter=`` exists only in newer
    Pythons) so the rules are the same everywhere: no absolute or ``..`` paths, no symbolic or
    hard links, no devices or FIFOs. Callers extract into a fresh private folder, so a member
    refused halfway leaves nothing behind.
    """
    dest_resolved = dest.resolve()
    total = 0
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                name = member.name
                parts = PurePosixPath(name.replace("\\", "/")).parts
                if name.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DataError(
                        f"refusing to extract {archive}: member {name!r} would be written "
                        f"outside {dest}"
                    )
                if member.issym() or member.islnk():
                    raise DataError(
                        f"refusing to extract {archive}: member {name!r} is a link to "
                        f"{member.linkname!r}; dataset archives contain only files and folders"
                    )
                if not (member.isfile() or member.isdir()):
                    raise DataError(
                        f"refusing to extract {archive}: member {name!r} is a device, FIFO or "
                        "other special file; dataset archives contain only files and folders"
                    )
                clean = [p for p in parts if p not in ("", ".")]
                if not clean:
                    continue
                target = dest.joinpath(*clean)
                if not target.resolve().is_relative_to(dest_resolved):
                    raise DataError(
                        f"refusing to extract {archive}: member {name!r} resolves outside {dest}"
                    )
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                total += member.size
                if total > _MAX_EXTRACT_BYTES:
                    raise DataError(
                        f"refusing to extract {archive}: it unpacks to more than "
                        f"{_MAX_EXTRACT_BYTES >> 20} MiB, far more than any dataset reslab reads"
                    )
                target.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(member)
                if src is None:
                    raise DataError(f"{archive}: member {name!r} has no readable data")
                with src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        why = " ".join(str(exc).split())  # tarfile's "r:*" lists each method it tried, a line each
        raise DataError(
            f"{archive} is not a readable .tar.gz archive ({why}); delete it and download it again"
        ) from exc


def _extract_folder(archive: Path, root: Path, folder: str) -> Path:
    """Extract ``archive`` in a private temporary folder and move its ``folder`` to ``root``.

    The rename is atomic, so a crash or a concurrent rank never leaves a half-extracted folder
    where the loader would take it for a complete one.
    """
    try:
        tmp = Path(tempfile.mkdtemp(prefix=".reslab-extract-", dir=root))
    except OSError as exc:
        raise DataError(
            f"cannot extract {archive}: {root} is not writable ({exc.strerror or exc})"
        ) from exc
    final = root / folder
    try:
        _safe_extract(archive, tmp)
        if not (tmp / folder).is_dir():
            raise DataError(
                f"{archive} has no {folder}/ folder; it is not the expected archive, "
                "delete it and download it again"
            )
        try:
            os.replace(tmp / folder, final)
        except OSError as exc:
            # A complete folder there means another process extracting at the same time won.
            if not final.is_dir():
                raise DataError(
                    f"cannot move the extracted {folder}/ to {final} ({exc.strerror or exc}); "
                    "remove whatever is in the way"
                ) from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
