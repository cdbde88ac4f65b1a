"""A preference dataset on disk in the Pick-a-Pic layout, streamed with Hugging Face ``datasets``.

Layout (Kirstain et al. 2023, Pick-a-Pic; the Diffusion-DPO code's ``yuvalkirstain/pickapic_v2``
columns): one row per comparison with ``caption`` (the prompt), ``jpg_0`` and ``jpg_1`` (the two
images) and ``label_0`` (1: ``jpg_0`` preferred, 0: ``jpg_1`` preferred, 0.5: a tie). Either Parquet
with the images as bytes (as the Hub stores Pick-a-Pic; a ``datasets`` Image struct works too), or
JSON lines whose ``jpg_0`` / ``jpg_1`` are image file paths relative to the .jsonl file. ``dataset``
is one such file or a folder of them (every *.parquet, else every *.jsonl, sorted).

Reading: ``datasets.load_dataset(..., streaming=True)`` — rows stream from disk, nothing is loaded
whole; a seeded shuffle buffer of ``shuffle_buffer`` rows, reseeded every pass over the data (epoch);
each process of a multi-process run reads its own shard (``split_dataset_by_node``). Only the rows of
the current micro-batch have their images decoded: RGB, resized (shorter side, bilinear) and
centre-cropped to the process' size as Diffusion-DPO's ``train_transforms`` do, then encoded by the
pipeline's VAE (``Process.encode``, a posterior sample). Ties are dropped, as Diffusion-DPO drops
Pick-a-Pic's split decisions. The stream's position (rows read by this process) is kept in the
checkpoint, so a resumed run reads exactly the rows an uninterrupted one would have.

Deviation: no random horizontal flip (Diffusion-DPO flips unless ``--no_hflip``): a flip swaps what a
caption's "left of" / "right of" describes. Each micro-batch shares one training step index (as for
distillation).
"""
from __future__ import annotations

import io as _io
from pathlib import Path
from typing import Iterator, Optional

import torch

from steer.finetune.preference_data import PreferenceBatch, stream_seed
from steer.finetune.trainer import Trainer

COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
FIX = "a Pick-a-Pic-layout dataset has the columns caption, jpg_0, jpg_1, label_0 (see steer.finetune.preference_dataset)"


def data_files(path: str) -> tuple[str, list[str]]:
    """(``datasets`` builder name, files) of a dataset path; a one-line error for anything else."""
    p = Path(path).expanduser()
    if p.is_dir():
        for ext, builder in (("parquet", "parquet"), ("jsonl", "json")):
            files = sorted(str(f) for f in p.glob(f"*.{ext}"))
            if files:
                return builder, files
        raise ValueError(f"dataset folder {str(p)!r} holds no *.parquet or *.jsonl file; {FIX}")
    if not p.is_file():
        raise ValueError(f"dataset {str(p)!r} does not exist; pass a .parquet / .jsonl file or a folder of them")
    builders = {".parquet": "parquet", ".jsonl": "json", ".json": "json"}
    if p.suffix not in builders:
        raise ValueError(f"dataset {str(p)!r}: expected a .parquet or .jsonl file, got {p.suffix or 'no suffix'!r}")
    return builders[p.suffix], [str(p)]


def open_stream(path: str, *, seed: int, buffer: int, rank: int = 0, world: int = 1):
    """The dataset as a shuffled ``datasets.IterableDataset`` (this process' shard); columns checked."""
    try:
        import datasets
    except ImportError:
        raise ValueError("reading a preference dataset needs Hugging Face datasets: pip install 'steer[preference]'") from None
    builder, files = data_files(path)
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(builder, data_files=files, split="train", streaming=True)
        columns = ds.column_names if ds.column_names is not None else list(next(iter(ds)).keys())
    except StopIteration:
        raise ValueError(f"dataset {path!r} has no rows") from None
    except Exception as e:  # a malformed file: one line naming it
        raise ValueError(f"dataset {path!r} could not be read ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    missing = [c for c in COLUMNS if c not in columns]
    if missing:
        raise ValueError(f"dataset {path!r} lacks the column(s) {', '.join(missing)} (it has {', '.join(columns)}); {FIX}")
    ds = ds.select_columns(list(COLUMNS))
    if world > 1:
        from datasets.distributed import split_dataset_by_node

        ds = split_dataset_by_node(ds, rank=rank, world_size=world)
    return ds.shuffle(seed=seed, buffer_size=buffer), files


class PairStream:
    """Rows of a Pick-a-Pic dataset in the run's order, resumable at a row count; yields
    (row number, caption, preferred image, other image) with ties skipped (counted in ``ties``)."""

    def __init__(self, trainer: Trainer, position: int = 0, epoch: int = 0):
        self.trainer, self.path = trainer, trainer.config.dataset
        self.position, self.epoch, self.ties = 0, epoch, 0
        self._rows: Optional[Iterator] = None
        self._root = None
        self._open()
        for _ in range(position):  # replay to where the checkpoint was taken
            next(self._rows)
            self.position += 1

    def _open(self) -> None:
        t = self.trainer
        ds, files = open_stream(self.path, seed=stream_seed(t, self.epoch), buffer=t.config.shuffle_buffer,
                                rank=t.rank, world=t.world)
        self._root = Path(files[0]).parent
        self._rows = iter(ds)

    def _next_row(self) -> dict:
        try:
            return next(self._rows)
        except StopIteration:
            if self.position == 0:
                raise ValueError(f"dataset {self.path!r} has no rows for this process") from None
            self.epoch, self.position = self.epoch + 1, 0  # next pass, reshuffled
            self._open()
            return next(self._rows)

    def next_pair(self, max_ties: int = 10_000):
        """The next non-tie row as (caption, winner image, loser image)."""
        for _ in range(max_ties):
            row = self._next_row()
            self.position += 1
            label = _label(row["label_0"], self.path)
            if label == 0.5:
                self.ties += 1
                continue
            caption = row["caption"]
            if not isinstance(caption, str):
                raise ValueError(f"dataset {self.path!r}: a caption is {type(caption).__name__}, not text; {FIX}")
            first, second = (_image(row[k], k, caption, self._root, self.path) for k in ("jpg_0", "jpg_1"))
            return (caption, first, second) if label == 1 else (caption, second, first)
        raise ValueError(f"dataset {self.path!r}: {max_ties} rows in a row are ties (label_0 = 0.5); "
                         f"every pair needs a preferred image (label_0 0 or 1)")


def _label(value, path) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if v not in (0.0, 0.5, 1.0):
        raise ValueError(f"dataset {path!r}: label_0 must be 1 (jpg_0 preferred), 0 (jpg_1 preferred) or 0.5 (a tie), "
                         f"got {value!r}")
    return v


def _image(value, column: str, caption: str, root: Path, path):
    """A PIL RGB image from bytes, a path (relative to the dataset file) or a ``datasets`` Image struct."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if value is None or (isinstance(value, (bytes, str)) and len(value) == 0):
        raise ValueError(f"dataset {path!r}: the pair of caption {caption[:60]!r} has no {column} image; "
                         f"every row needs two images (jpg_0 and jpg_1)")
    try:
        if isinstance(value, (bytes, bytearray)):
            return Image.open(_io.BytesIO(value)).convert("RGB")
        file = Path(value) if Path(value).is_absolute() else root / value
        return Image.open(file).convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        where = f"file {value!r}" if isinstance(value, str) else "bytes"
        raise ValueError(f"dataset {path!r}: {column} of caption {caption[:60]!r} is unreadable ({where}: "
                         f"{type(e).__name__}); fix or drop that row") from None


def to_tensor(image, height: int, width: int) -> torch.Tensor:
    """Resize the shorter side (bilinear) and centre-crop to (height, width): (3, H, W) in [0, 1]."""
    import numpy as np
    from PIL import Image

    scale = max(height / image.height, width / image.width)
    size = (max(width, round(image.width * scale)), max(height, round(image.height * scale)))
    image = image.resize(size, Image.BILINEAR)
    left, top = (size[0] - width) // 2, (size[1] - height) // 2
    image = image.crop((left, top, left + width, top + height))
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)


def _stream(trainer: Trainer) -> PairStream:
    """The run's stream, reopened at the checkpointed position after a resume."""
    stream = getattr(trainer, "_pair_stream", None)
    state = trainer.extra.setdefault("dataset_stream", {"position": 0, "epoch": 0, "ties": 0})
    if stream is None or (stream.position, stream.epoch) != (state["position"], state["epoch"]):
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
