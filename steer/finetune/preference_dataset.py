"""A preference dataset on disk in the Pick-a-Pic layout, streamed row by row.

Layout (Kirstain et al. 2023, Pick-a-Pic; the Diffusion-DPO code's ``yuvalkirstain/pickapic_v2``
columns): one row per comparison with ``caption`` (the prompt), ``jpg_0`` and ``jpg_1`` (the two
images) and ``label_0`` (1: ``jpg_0`` preferred, 0: ``jpg_1`` preferred, 0.5: a tie). Either Parquet
with the images as bytes (as the Hub stores Pick-a-Pic; a ``datasets`` Image struct works too), or
JSON lines whose ``jpg_0`` / ``jpg_1`` are image file paths relative to the .jsonl file. ``dataset``
is one such file or a folder of them (every *.parquet or every *.jsonl, sorted; not both).

Reading: Parquet with ``pyarrow`` (a record batch at a time), JSON lines line by line — local files
only, nothing opens a connection (no Hugging Face ``datasets`` Hub lookups). Rows stream through a
seeded shuffle buffer of ``shuffle_buffer`` rows, reseeded every pass over the data (epoch); each
process of a multi-process run keeps every ``world``-th row of the pass (its shard). Only the rows of
the current micro-batch have their images decoded: RGB, resized (shorter side, bilinear) and
centre-cropped to the process' size as Diffusion-DPO's ``train_transforms`` do, then encoded by the
pipeline's VAE (``Process.encode``, a posterior sample). Ties are dropped, as Diffusion-DPO drops
Pick-a-Pic's split decisions; a pass of only ties is an error. The stream's position (rows read by
this process) is kept in the checkpoint, so a resumed run reads exactly the rows an uninterrupted one
would have; the data's ``fingerprint`` is one of the run's settings, so a resume refuses changed data.

Safety: an image path is resolved inside the dataset's folder (the folder, or a single file's
folder); a path leading outside it (``../``, an absolute path, a symlink whose target is outside) or
to anything but a regular file (a FIFO, a device, a folder) is refused without being opened. An image
of more than ``MAX_IMAGE_PIXELS`` pixels (read from its header) is refused before it is decoded.
Every bad cell, row or file is a one-line ``SteerError`` naming the file and the row.

Deviation: no random horizontal flip (Diffusion-DPO flips unless ``--no_hflip``): a flip swaps what a
caption's "left of" / "right of" describes. Each micro-batch shares one training step index (as for
distillation).

Which files a dataset path names, opening them safely and the fingerprint are ``dataset_files``'s (re-exported
here); the micro-batch type and the stream's seed are ``preference_common``'s.
"""
from __future__ import annotations

import io as _io
import json
import os
import random
import warnings
from pathlib import Path
from typing import Iterator, NamedTuple, Optional

import torch

from steer import io
from steer.errors import SteerError
from steer.finetune.dataset_files import (FIX, FULL_HASH_BYTES, SAMPLE_BYTES, _brief, _name,  # noqa: F401
                                         _open_regular, data_files, dataset_fingerprint, dataset_root, fingerprint)
from steer.finetune.preference_common import PreferenceBatch, stream_seed
from steer.finetune.trainer import Trainer

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
MAX_IMAGE_PIXELS = 8192 * 8192  # larger images are refused from their header (below PIL's bomb warning, 89.5 MP)
_BATCH_ROWS = 64  # Parquet rows read at a time


class Row(NamedTuple):
    """One row of the dataset: its file, where in it (``line 3`` / ``row index 2``) and its cells."""

    file: Path
    where: str
    cells: dict


def _show(value) -> str:
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


# ---- the run's stream of pairs --------------------------------------------------------------------
class PairStream:
    """Rows of a Pick-a-Pic dataset in the run's order, resumable at a row count; ``next_pair`` gives
    (caption, preferred image, other image) with ties skipped (counted in ``ties``)."""

    def __init__(self, trainer: Trainer, position: int = 0, epoch: int = 0):
        self.trainer, self.path = trainer, trainer.config.dataset
        self.position, self.epoch, self.ties = 0, epoch, 0
        self._root = dataset_root(self.path)
        self._rows: Optional[Iterator[Row]] = None
        self._open()
        for _ in range(position):  # replay to where the checkpoint was taken
            if next(self._rows, None) is None:
                raise SteerError(f"--resume: dataset {_name(self.path)} ran out after {self.position} rows of pass "
                                 f"{epoch}{self._who()}, but the checkpoint had read {position}: the data changed "
                                 f"since the run began; resume with that data, or start over with --overwrite")
            self.position += 1
        self._whole_pass = position == 0  # this object reads the current pass from its first row

    def _who(self) -> str:
        t = self.trainer
        return f" for process {t.rank} of {t.world}" if t.world > 1 else ""

    def _open(self) -> None:
        t = self.trainer
        self._rows, _ = open_stream(self.path, seed=stream_seed(t, self.epoch), buffer=t.config.shuffle_buffer,
                                    rank=t.rank, world=t.world)
        self._whole_pass, self._usable = True, 0

    def _next_row(self) -> Row:
        row = next(self._rows, None)
        if row is not None:
            return row
        if self.position == 0:
            raise SteerError(f"dataset {_name(self.path)} has no rows{self._who()}; it needs at least as many rows "
                             f"as processes")
        if self._whole_pass and self._usable == 0:  # a whole pass of ties: no later pass differs
            raise SteerError(f"dataset {_name(self.path)}: all {self.position} rows{self._who()} are ties "
                             f"(label_0 = 0.5); every pair needs a preferred image (label_0 0 or 1)")
        self.epoch, self.position = self.epoch + 1, 0  # next pass, reshuffled
        self._open()
        row = next(self._rows, None)
        if row is None:
            raise SteerError(f"dataset {_name(self.path)} has no rows{self._who()} in pass {self.epoch}: it changed "
                             f"during the run; keep the dataset unchanged while training")
        return row

    def next_pair(self, max_ties: int = 10_000):
        """The next non-tie row as (caption, winner image, loser image); a bounded error when ties never end."""
        for _ in range(max_ties):
            row = self._next_row()
            self.position += 1
            label, caption = _label(row), _caption(row)
            if label == 0.5:
                self.ties += 1
                continue
            self._usable += 1
            first, second = (_image(row, k, self._root) for k in ("jpg_0", "jpg_1"))
            return (caption, first, second) if label == 1 else (caption, second, first)
        raise SteerError(f"dataset {_name(self.path)}: {max_ties} rows in a row are ties (label_0 = 0.5); "
                         f"every pair needs a preferred image (label_0 0 or 1)")


def _at(row: Row) -> str:
    return f"dataset file {_name(row.file)} {row.where}"


def _label(row: Row) -> float:
    value = row.cells["label_0"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in (0, 0.5, 1):
        raise SteerError(f"{_at(row)}: label_0 must be 1 (jpg_0 preferred), 0 (jpg_1 preferred) or 0.5 (a tie), "
                         f"got {type(value).__name__} {_show(value)}")
    return float(value)


def _caption(row: Row) -> str:
    caption = row.cells["caption"]
    if not isinstance(caption, str):
        raise SteerError(f"{_at(row)}: caption is {type(caption).__name__} {_show(caption)}, not text; {FIX}")
    return io.check_prompt(caption, f"{_at(row)}: caption")  # NUL, invisible-only and over-long captions


def _image(row: Row, column: str, root: Path):
    """A PIL RGB image from bytes, a path inside the dataset folder or a ``datasets`` Image struct."""
    value, where = row.cells[column], f"{_at(row)}: {column}"
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None or (isinstance(value, (bytes, bytearray, str)) and len(value) == 0):
        raise SteerError(f"{_at(row)} has no {column} image; every row needs two images (jpg_0 and jpg_1)")
    if isinstance(value, (bytes, bytearray)):
        return _decode(_io.BytesIO(value), f"{where} (bytes)")
    if isinstance(value, str):
        with _open_inside(value, root, where) as handle:
            return _decode(handle, f"{where} (file {_show(value)})")
    raise SteerError(f"{where} is {type(value).__name__} {_show(value)}, not image bytes or a path inside the "
                     f"dataset folder; {FIX}")


def _open_inside(value: str, root: Path, where: str):
    """The image file ``value`` names, resolved (symlinks followed) inside ``root`` and opened if regular."""
    try:
        target = (root / value).resolve(strict=True)
    except FileNotFoundError:
        raise SteerError(f"{where}: image file {_show(value)} does not exist in the dataset folder {_name(root)}; "
                         f"fix the path or drop the row") from None
    except (OSError, ValueError, RuntimeError) as e:  # a symlink loop, a NUL byte, an unencodable name
        raise SteerError(f"{where}: image path {_show(value)} cannot be resolved ({_brief(e)}); fix the path or "
                         f"drop the row") from None
    if target != root and root not in target.parents:
        raise SteerError(f"{where}: image path {_show(value)} leads outside the dataset folder {_name(root)}; "
                         f"image paths must name files inside it (relative, symlinks only to files inside)")
    return _open_regular(target, f"{where}: image path {_show(value)}")


IMAGE_FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "PPM")  # never EPS (Ghostscript) and the like


def _decode(handle, what: str):
    """An RGB image; more than ``MAX_IMAGE_PIXELS`` pixels (from the header) is refused before decoding."""
    from PIL import Image

    try:
        with warnings.catch_warnings():  # PIL's multi-line bomb warning: the header check below says it in one line
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(handle, formats=IMAGE_FORMATS)
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise SteerError(f"{what} is {image.width}x{image.height} pixels, more than MAX_IMAGE_PIXELS = "
                                 f"{MAX_IMAGE_PIXELS} (steer.finetune.preference_dataset); downscale it or drop "
                                 f"the row")
            return image.convert("RGB")
    except SteerError:
        raise
    except Image.DecompressionBombError:
        raise SteerError(f"{what} has more than {MAX_IMAGE_PIXELS} pixels (MAX_IMAGE_PIXELS, "
                         f"steer.finetune.preference_dataset); downscale it or drop the row") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, EOFError, ... for broken data
        raise SteerError(f"{what} is unreadable ({_brief(e)}); fix or drop that row") from None


def to_tensor(image, height: int, width: int) -> torch.Tensor:
    """Resize the shorter side (bilinear) and centre-crop to (height, width): (3, H, W) in [0, 1]. The crop's
    region is resized alone (``box``), so an image of an extreme aspect ratio is never resized whole."""
    import numpy as np
    from PIL import Image

    scale = max(height / image.height, width / image.width)
    box_w, box_h = width / scale, height / scale
    left, top = (image.width - box_w) / 2, (image.height - box_h) / 2
    image = image.resize((width, height), Image.BILINEAR, box=(left, top, left + box_w, top + box_h))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _stream(trainer: Trainer) -> PairStream:
    """The run's stream, reopened at the checkpointed position after a resume."""
    stream = getattr(trainer, "_pair_stream", None)
    state = trainer.extra.setdefault("dataset_stream", {"position": 0, "epoch": 0, "ties": 0})
    if stream is None or (stream.position, stream.epoch) != (state["position"], state["epoch"]):
        dataset_fingerprint(trainer)  # taken when the run first reads the data (a setting a resume compares)
        stream = trainer._pair_stream = PairStream(trainer, state["position"], state["epoch"])
        stream.ties = state["ties"]
    return stream


def dataset_batch(trainer: Trainer, generator: torch.Generator, *, paired: bool) -> PreferenceBatch:
    """The next B pairs (DPO: x0 = [winners; losers]) or, for KTO, ceil(B / 2) pairs read as desirable
    winners and undesirable losers (B samples)."""
    process, config = trainer.process, trainer.config
    stream = _stream(trainer)
    n_pairs = config.train_batch_size if paired else (config.train_batch_size + 1) // 2
    captions, winners, losers = [], [], []
    height, width = _image_size(process)
    for _ in range(n_pairs):
        caption, w, l = stream.next_pair()
        captions.append(caption)
        winners.append(to_tensor(w, height, width))
        losers.append(to_tensor(l, height, width))
    trainer.extra["dataset_stream"] = {"position": stream.position, "epoch": stream.epoch, "ties": stream.ties}
    images = torch.stack(winners + losers)  # (2P, 3, H, W)
    x0 = process.encode(images, generator).to(process.device)  # (2P, *latent)
    if paired:
        return PreferenceBatch(x0=x0, cond=process.prepare(captions), prompts=captions)
    desirable = torch.cat([torch.ones(n_pairs, dtype=torch.bool), torch.zeros(n_pairs, dtype=torch.bool)])
    keep = torch.arange(config.train_batch_size)  # winners first, then losers, B in all
    rows = [k % n_pairs for k in keep.tolist()]  # each sample's caption row (every caption encoded once)
    return PreferenceBatch(x0=x0[keep], cond=process.prepare(captions).index(rows),
                           prompts=[captions[r] for r in rows], desirable=desirable[keep])


def _image_size(process) -> tuple[int, int]:
    height, width = getattr(process, "height", None), getattr(process, "width", None)
    if height is None or width is None:
        raise ValueError(f"{process.name} cannot encode images into latents; train from samples instead "
                         f"(source='steering' or 'verifier')")
    return int(height), int(width)
