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
here); reading the rows of Parquet / JSON-lines files and the shuffle are ``preference_rows``'; the micro-batch
type and the stream's seed are ``preference_common``'s.
"""
from __future__ import annotations

import io as _io
import warnings
from pathlib import Path
from typing import Iterator, Optional

import torch

from steer import io
from steer.errors import SteerError
from steer.finetune.dataset_files import (FIX, FULL_HASH_BYTES, SAMPLE_BYTES, _brief, _name,  # noqa: F401
                                         _open_regular, data_files, dataset_fingerprint, dataset_root, fingerprint)
from steer.finetune.preference_common import PreferenceBatch, stream_seed
from steer.finetune.preference_rows import Row, open_stream, show_value
from steer.finetune.trainer import Trainer

MAX_IMAGE_PIXELS = 8192 * 8192  # larger images are refused from their header (below PIL's bomb warning, 89.5 MP)


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
                         f"got {type(value).__name__} {show_value(value)}")
    return float(value)


def _caption(row: Row) -> str:
    caption = row.cells["caption"]
    if not isinstance(caption, str):
        raise SteerError(f"{_at(row)}: caption is {type(caption).__name__} {show_value(caption)}, not text; {FIX}")
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
            return _decode(handle, f"{where} (file {show_value(value)})")
    raise SteerError(f"{where} is {type(value).__name__} {show_value(value)}, not image bytes or a path inside the "
                     f"dataset folder; {FIX}")


def _open_inside(value: str, root: Path, where: str):
    """The image file ``value`` names, resolved (symlinks followed) inside ``root`` and opened if regular."""
    try:
        target = (root / value).resolve(strict=True)
    except FileNotFoundError:
        raise SteerError(f"{where}: image file {show_value(value)} does not exist in the dataset folder {_name(root)}; "
                         f"fix the path or drop the row") from None
    except (OSError, ValueError, RuntimeError) as e:  # a symlink loop, a NUL byte, an unencodable name
        raise SteerError(f"{where}: image path {show_value(value)} cannot be resolved ({_brief(e)}); fix the path or "
                         f"drop the row") from None
    if target != root and root not in target.parents:
        raise SteerError(f"{where}: image path {show_value(value)} leads outside the dataset folder {_name(root)}; "
                         f"image paths must name files inside it (relative, symlinks only to files inside)")
    return _open_regular(target, f"{where}: image path {show_value(value)}")


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
