"""The rows of a Pick-a-Pic-layout preference dataset (``steer.finetune.preference_dataset``): JSON lines, a JSON
array or Parquet (``pyarrow``, a record batch at a time), each cell checked for its kind, every bad cell, row or
file one line naming the file and the row; and the seeded, sharded shuffle of a pass over the rows."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

from steer.errors import SteerError
from steer.finetune.dataset_files import FIX, _brief, _name, _open_regular, data_files

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
_BATCH_ROWS = 64  # Parquet rows read at a time


class Row(NamedTuple):
    """One row of the dataset: its file, where in it (``line 3`` / ``row index 2``) and its cells."""

    file: Path
    where: str
    cells: dict


def show_value(value) -> str:
    """A cell's value for a message: one line, at most ~60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- rows -----------------------------------------------------------------------------------------
_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "true / false",
               type(None): "null"}


def _names(names) -> str:
    """Column names for a message: printable ones as they are, others quoted; at most 12."""
    shown = [n if isinstance(n, str) and n.isprintable() else repr(n) for n in list(names)[:12]]
    return ", ".join(shown) + (", ..." if len(names) > 12 else "") if shown else "none"


def _columns(cells: dict, file: Path, where: str) -> dict:
    missing = [c for c in COLUMNS if c not in cells]
    if missing:
        raise SteerError(f"dataset file {_name(file)} {where} lacks the column(s) {', '.join(missing)} "
                         f"(it has {_names(list(cells))}); {FIX}")
    return {c: cells[c] for c in COLUMNS}


def _json_row(raw: bytes, file: Path, where: str) -> dict:
    """One JSON lines row, parsed and checked: an object with the four columns."""
    try:
        value = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise SteerError(f"dataset file {_name(file)} {where} is not UTF-8 text (byte {e.start + 1}); "
                         f"save the file as UTF-8 JSON lines") from None
    except json.JSONDecodeError as e:
        raise SteerError(f"dataset file {_name(file)} {where} is not valid JSON ({e.msg}, column {e.colno}); "
                         f"fix or delete that line (one JSON object per line)") from None
    except (ValueError, RecursionError) as e:
        raise SteerError(f"dataset file {_name(file)} {where} is not valid JSON ({_brief(e)}); "
                         f"fix or delete that line (one JSON object per line)") from None
    if not isinstance(value, dict):
        kind = _JSON_TYPES.get(type(value), type(value).__name__)
        raise SteerError(f"dataset file {_name(file)} {where} is a JSON {kind}, not an object; write one JSON "
                         f"object per line with caption, jpg_0, jpg_1, label_0")
    return _columns(value, file, where)


def _json_array(text: bytes, file: Path) -> Iterator[tuple[str, dict]]:
    """The rows of a .json file holding one JSON array of row objects."""
    try:
        rows = json.loads(text.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise SteerError(f"dataset file {_name(file)} is not valid JSON ({_brief(e)}); write one JSON object "
                         f"per line (.jsonl) or one array of objects") from None
    for k, value in enumerate(rows):
        where = f"item {k}"
        if not isinstance(value, dict):
            raise SteerError(f"dataset file {_name(file)} {where} is a JSON "
                             f"{_JSON_TYPES.get(type(value), type(value).__name__)}, not an object; {FIX}")
        yield where, _columns(value, file, where)


def _jsonl_rows(file: Path) -> Iterator[tuple[str, dict]]:
    """(``line N``, cells) of a JSON lines file, line by line; blank lines are skipped."""
    with _open_regular(file, f"dataset file {_name(file)}") as handle:
        for n, raw in enumerate(handle, 1):
            if n == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
                raw = raw[3:]
            if not raw.strip():
                continue
            if file.suffix == ".json" and raw.lstrip().startswith(b"["):  # one JSON array, not JSON lines
                yield from _json_array(raw + handle.read(), file)
                return
            yield f"line {n}", _json_row(raw.strip(), file, f"line {n}")


def _parquet_file(handle, file: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise SteerError("reading a Parquet preference dataset needs pyarrow: pip install 'steer[preference]'") from None
    if os.fstat(handle.fileno()).st_size == 0:
        raise SteerError(f"dataset file {_name(file)} is empty (0 bytes); write a Parquet table into it or remove it")
    try:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
    except Exception as e:  # pyarrow's errors for a file that is not Parquet, truncated or corrupt
        raise SteerError(f"dataset file {_name(file)} is not a readable Parquet file ({_brief(e)}); rewrite it "
                         f"(e.g. pyarrow.parquet.write_table) or remove it") from None
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise SteerError(f"dataset file {_name(file)} lacks the column(s) {', '.join(missing)} "
                         f"(it has {_names(names)}); {FIX}")
    for column in COLUMNS:  # a column of the wrong type is refused before any row is read
        dtype = parquet.schema_arrow.field(column).type
        if _arrow_kind(dtype) not in _KINDS[column]:
            raise SteerError(f"dataset file {_name(file)}: column {column} holds {str(dtype)[:60]}, not "
                             f"{_WANT[column]}; {FIX}")
    return parquet


_KINDS = {"caption": ("text", None), "label_0": ("number", None), "jpg_0": ("bytes", "text", "struct", None),
          "jpg_1": ("bytes", "text", "struct", None)}  # None: only nulls, refused row by row
_WANT = {"caption": "text", "label_0": "numbers (1, 0 or 0.5)", "jpg_0": "image bytes, paths or Image structs",
         "jpg_1": "image bytes, paths or Image structs"}


def _arrow_kind(dtype) -> Optional[str]:
    """What a Parquet column holds: ``number``, ``text``, ``bytes``, ``struct``, None (nulls) or its type."""
    import pyarrow.types as t

    if t.is_dictionary(dtype):
        dtype = dtype.value_type
    for test, kind in ((t.is_null, None), (t.is_integer, "number"), (t.is_floating, "number"), (t.is_string, "text"),
                       (t.is_large_string, "text"), (t.is_binary, "bytes"), (t.is_large_binary, "bytes"),
                       (t.is_struct, "struct")):
        if test(dtype):
            return kind
    return str(dtype)


def _parquet_rows(file: Path) -> Iterator[tuple[str, dict]]:
    """(``row index K``, cells) of a Parquet file, ``_BATCH_ROWS`` rows read at a time."""
    with _open_regular(file, f"dataset file {_name(file)}") as handle:
        parquet = _parquet_file(handle, file)
        k = 0
        try:
            batches = parquet.iter_batches(batch_size=_BATCH_ROWS, columns=list(COLUMNS))
            while True:
                try:
                    batch = next(batches, None)
                    rows = None if batch is None else batch.to_pylist()
                except Exception as e:  # a corrupt page or column chunk
                    raise SteerError(f"dataset file {_name(file)} is corrupt at row index {k} or after "
                                     f"({_brief(e)}); rewrite it or remove it") from None
                if rows is None:
                    return
                for cells in rows:
                    yield f"row index {k}", cells
                    k += 1
        finally:
            parquet.close()


def _file_rows(fmt: str, file: Path) -> Iterator[tuple[str, dict]]:
    return _parquet_rows(file) if fmt == "parquet" else _jsonl_rows(file)


def _has_rows(fmt: str, file: Path) -> bool:
    """Whether ``file`` holds a row (Parquet: from its footer; JSON lines: its first row, checked)."""
    if fmt == "parquet":
        with _open_regular(file, f"dataset file {_name(file)}") as handle:
            parquet = _parquet_file(handle, file)
            try:
                return parquet.metadata.num_rows > 0
            finally:
                parquet.close()
    rows = _jsonl_rows(file)
    try:
        return next(rows, None) is not None
    finally:
        rows.close()


def check_files(path: str, fmt: str, files: list[Path]) -> None:
    """Every file readable with the four columns (the first error names its file) and some row in all."""
    if not any([_has_rows(fmt, f) for f in files]):  # a list: every file is checked
        what = "a Parquet table of 0 rows" if fmt == "parquet" else "no JSON object, only blank lines or nothing"
        where = f"dataset file {_name(files[0])}" if len(files) == 1 else \
            f"dataset {_name(path)} ({len(files)} *.{fmt} files)"
        raise SteerError(f"{where} has no rows ({what}); {FIX}")


def _in_order(fmt: str, files: list[Path], rng: random.Random, rank: int, world: int) -> Iterator[Row]:
    """One pass: the files in a seeded order, every ``world``-th row from ``rank`` on (this process' shard)."""
    order = list(files)
    rng.shuffle(order)
    k = 0
    for file in order:
        for where, cells in _file_rows(fmt, file):
            if k % world == rank:
                yield Row(file, where, cells)
            k += 1


def _shuffled(rows: Iterator[Row], rng: random.Random, size: int) -> Iterator[Row]:
    """A shuffle buffer of ``size`` rows: each new row takes the place of a random one, which is yielded."""
    buffer: list[Row] = []
    for row in rows:
        if len(buffer) < size:
            buffer.append(row)
            continue
        k = rng.randrange(size)
        yield buffer[k]
        buffer[k] = row
    rng.shuffle(buffer)
    yield from buffer


def open_stream(path: str, *, seed: int, buffer: int, rank: int = 0,
                world: int = 1) -> tuple[Iterator[Row], list[Path]]:
    """One pass over the dataset in a seeded shuffled order (this process' shard), files checked first."""
    fmt, files = data_files(path)
    check_files(path, fmt, files)
    rng = random.Random(seed)
    return _shuffled(_in_order(fmt, files, rng, rank, world), rng, max(1, int(buffer))), files
