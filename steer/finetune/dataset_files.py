"""The files of a preference dataset on disk (``preference_dataset``): which files a dataset path
names, each opened only if it is a regular file, and the dataset's ``fingerprint`` (one of a run's
settings, ``run_folder.settings``, so a resume refuses changed data). Imports nothing of the trainer."""
from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

from steer.errors import SteerError

FIX = "a Pick-a-Pic-layout dataset has the columns caption, jpg_0, jpg_1, label_0 (see steer.finetune.preference_dataset)"
FULL_HASH_BYTES = 1 << 30  # data files up to this size in all are fingerprinted byte for byte
SAMPLE_BYTES = 1 << 20  # larger ones by size, mtime and their first and last MiB


def _name(file) -> str:
    return repr(str(file))


def _brief(e: BaseException) -> str:
    """An exception as ``Type: first line`` (one line, at most 160 characters)."""
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__


# ---- files ----------------------------------------------------------------------------------------
def _kind(mode: int) -> str:
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return what
    return "not a regular file"


def _open_regular(path: Path, what: str):
    """``path`` opened for reading (binary) if it is a regular file; checked with ``os.stat`` before it is
    opened (a FIFO or a device is never opened) and with ``os.fstat`` after (the same file)."""
    try:
        before = os.stat(path)
        if not stat.S_ISREG(before.st_mode):
            raise SteerError(f"{what} is {_kind(before.st_mode)}, not a regular file; use a regular file")
        flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
        fd = os.open(path, flags)
    except SteerError:
        raise
    except FileNotFoundError:
        raise SteerError(f"{what} does not exist") from None
    except (OSError, ValueError) as e:
        raise SteerError(f"{what} cannot be opened ({_brief(e)})") from None
    after = os.fstat(fd)
    if not stat.S_ISREG(after.st_mode) or (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
        os.close(fd)
        raise SteerError(f"{what} changed while it was being opened; keep the dataset unchanged while training")
    return os.fdopen(fd, "rb")


def data_files(path: str) -> tuple[str, list[Path]]:
    """(``'parquet'`` or ``'jsonl'``, files) of a dataset path; a one-line error for anything else."""
    p = Path(path).expanduser()
    if p.is_dir():
        found = {ext: sorted(p.glob(f"*.{ext}")) for ext in ("parquet", "jsonl")}
        if found["parquet"] and found["jsonl"]:
            raise SteerError(f"dataset folder {_name(p)} mixes Parquet and JSON lines ({found['parquet'][0].name!r}, "
                             f"{found['jsonl'][0].name!r}); keep one format in a dataset folder")
        fmt = "parquet" if found["parquet"] else "jsonl"
        files = found[fmt]
        if not files:
            raise SteerError(f"dataset folder {_name(p)} holds no *.parquet or *.jsonl file; {FIX}")
    else:
        if not os.path.lexists(p):
            raise SteerError(f"dataset {_name(p)} does not exist; pass a .parquet / .jsonl file or a folder of them")
        formats = {".parquet": "parquet", ".jsonl": "jsonl", ".json": "jsonl"}
        if p.suffix not in formats:
            raise SteerError(f"dataset {_name(p)}: expected a .parquet or .jsonl file, got {p.suffix or 'no suffix'!r}")
        fmt, files = formats[p.suffix], [p]
    for f in files:  # a FIFO named pairs.jsonl would hang the run: refuse it before it is opened
        try:
            mode = os.stat(f).st_mode
        except OSError as e:
            raise SteerError(f"dataset file {_name(f)} cannot be read ({_brief(e)})") from None
        if not stat.S_ISREG(mode):
            raise SteerError(f"dataset file {_name(f)} is {_kind(mode)}, not a regular file; "
                             f"a dataset is made of regular .parquet / .jsonl files")
    return fmt, files


def dataset_root(path: str) -> Path:
    """The folder image paths are resolved in: the dataset folder, or a single file's folder."""
    p = Path(path).expanduser()
    return (p if p.is_dir() else p.parent).resolve()


def fingerprint(path: str) -> str:
    """The dataset's contents as ``sha256:<16 hex> of N file(s)``: the data files' names, sizes and bytes
    (beyond ``FULL_HASH_BYTES`` in all: sizes, mtimes and each file's first and last ``SAMPLE_BYTES``).
    Image files a .jsonl names are covered by their paths (in the .jsonl), not by their bytes."""
    _, files = data_files(path)
    sizes = [os.stat(f).st_size for f in files]
    whole = sum(sizes) <= FULL_HASH_BYTES
    h = hashlib.sha256()
    for f, size in zip(files, sizes):
        h.update(f"{f.name}\0{size}\0".encode("utf-8", "surrogateescape"))
        with _open_regular(f, f"dataset file {_name(f)}") as handle:
            if whole:
                for chunk in iter(lambda: handle.read(SAMPLE_BYTES), b""):
                    h.update(chunk)
            else:
                h.update(str(os.fstat(handle.fileno()).st_mtime_ns).encode())
                h.update(handle.read(SAMPLE_BYTES))
                handle.seek(max(0, size - SAMPLE_BYTES))
                h.update(handle.read(SAMPLE_BYTES))
    return f"sha256:{h.hexdigest()[:16]} of {len(files)} file(s)"


def dataset_fingerprint(trainer) -> str:
    """``trainer``'s dataset and its ``fingerprint``, computed once per run (a setting a resume compares)."""
    value = getattr(trainer, "_dataset_fingerprint", None)
    if value is None:
        value = trainer._dataset_fingerprint = f"{trainer.config.dataset}: {fingerprint(trainer.config.dataset)}"
    return value
