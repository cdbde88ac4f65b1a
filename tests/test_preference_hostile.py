"""A preference dataset on disk as hostile input: image paths that leave the dataset folder or name a
FIFO, a changed dataset under ``--resume``, no network for local data, bounded all-ties, and one-line
errors (naming the file and the row) for every malformed cell, row, file and image."""
from __future__ import annotations

import io as _io
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from steer.errors import SteerError
from steer.finetune import DPOConfig, KTOConfig, kto, preference_dataset
from steer.finetune.preference_dataset import MAX_IMAGE_PIXELS, PairStream, Row, fingerprint, to_tensor
from tests.test_finetune import WIDE, Interrupt, _stop_at, tiny_process
from tests.test_preference import _png, _rows, write_jsonl, write_parquet

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                        HealthCheck.too_slow])


def _trainer(path, **kw):
    return SimpleNamespace(config=DPOConfig(source="dataset", dataset=str(path), **{"shuffle_buffer": 1, **kw}),
                           rank=0, world=1)


def _error(path, pairs=1, **kw) -> str:
    """The one-line SteerError of reading ``pairs`` pairs of the dataset at ``path``."""
    with pytest.raises(SteerError) as e:
        stream = PairStream(_trainer(path, **kw))
        for _ in range(pairs):
            stream.next_pair()
    message = str(e.value)
    assert "\n" not in message and "\r" not in message, message
    return message


def _jsonl(folder: Path, entries, name="pairs.jsonl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(e) + "\n" for e in entries))
    return folder / name


def _row(jpg_0="a.png", jpg_1="b.png", label=1.0, caption="a red cube"):
    return {"caption": caption, "jpg_0": jpg_0, "jpg_1": jpg_1, "label_0": label}


@pytest.fixture
def folder(tmp_path):
    """tmp/data holding a.png and b.png; tmp/outside.png beside it (a file the dataset must never read)."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "a.png").write_bytes(_png((200, 0, 0)))
    (data / "b.png").write_bytes(_png((0, 0, 200)))
    (tmp_path / "outside.png").write_bytes(_png((0, 200, 0)))
    return data


@pytest.fixture
def opened(monkeypatch):
    """The paths ``os.open`` is called with (the dataset opens every image and data file through it)."""
    calls = []
    real = os.open
    monkeypatch.setattr(os, "open", lambda path, *a, **k: calls.append(os.fspath(path)) or real(path, *a, **k))
    return calls


# ---- 5: image paths stay inside the dataset folder, regular files only ------------------------------------
def _hostile_paths(folder: Path) -> dict:
    outside = folder.parent / "outside.png"
    os.mkfifo(folder / "pipe.png")
    os.symlink(outside, folder / "link_out.png")
    os.symlink(folder / "a.png", folder / "link_in.png")
    os.symlink("sub/../../outside.png", folder / "link_rel_out.png")
    (folder / "sub").mkdir()
    return {"../outside.png": "outside the dataset folder", str(outside): "outside the dataset folder",
            "link_out.png": "outside the dataset folder", "link_rel_out.png": "outside the dataset folder",
            "sub/../../outside.png": "outside the dataset folder", "/etc/passwd": "outside the dataset folder",
            "pipe.png": "is a FIFO, not a regular file", "sub": "is a folder, not a regular file",
            "missing.png": "does not exist", "a\x00b.png": "cannot be resolved"}


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_image_paths_outside_the_folder_or_not_regular_files_are_refused_unopened(folder, opened, fmt):
    cases = _hostile_paths(folder)
    for k, (bad, expected) in enumerate(cases.items()):
        rows = [_row(), _row(jpg_1=bad)]  # in order: a shuffle buffer of one row
        path = _jsonl(folder, rows, f"case{k}.jsonl") if fmt == "jsonl" else write_parquet(folder / f"case{k}.parquet", rows)
        started = time.monotonic()
        message = _error(path, pairs=2)
        where = "line 2" if fmt == "jsonl" else "row index 1"
        assert expected in message and where in message and "jpg_1" in message, (bad, message)
        assert time.monotonic() - started < 30  # a FIFO never hangs the run
    touched = {Path(p).resolve() for p in opened}
    for never in (folder.parent / "outside.png", folder / "pipe.png", Path("/etc/passwd")):
        assert never.resolve() not in touched


def test_a_symlink_to_a_file_inside_the_folder_is_read(folder):
    os.symlink("a.png", folder / "link_in.png")
    path = _jsonl(folder, [_row(jpg_0="link_in.png"), _row(jpg_0=str(folder / "b.png"))])  # absolute, inside
    stream = PairStream(_trainer(path))
    for _ in range(2):
        caption, winner, loser = stream.next_pair()
        assert winner.size == loser.size == (40, 48)


def test_a_fifo_or_device_as_the_dataset_file_is_refused_unopened(tmp_path, opened):
    os.mkfifo(tmp_path / "pairs.jsonl")
    assert "is a FIFO, not a regular file" in _error(tmp_path)  # the folder
    assert "is a FIFO, not a regular file" in _error(tmp_path / "pairs.jsonl")  # the file itself
    assert not opened


_PARTS = st.sampled_from(["..", ".", "a.png", "b.png", "sub", "pipe.png", "link_out.png", "link_in.png",
                          "link_rel_out.png", "outside.png", "missing.png", "", "/", "//", "~", "data", "\x00"])


@FAST
@given(parts=st.lists(_PARTS, min_size=1, max_size=6), absolute=st.booleans(), noise=st.text(max_size=8))
def test_any_image_path_reads_only_regular_files_inside_the_folder(tmp_path_factory, parts, absolute, noise):
    # a fuzz of the whole class: whatever a path cell holds, the dataset reads a regular file inside its
    # folder or refuses in one line, and never opens anything else
    root = tmp_path_factory.getbasetemp() / "fuzz_paths"
    data = root / "data"
    if not data.exists():
        data.mkdir(parents=True)
        (data / "a.png").write_bytes(_png((200, 0, 0)))
        (data / "b.png").write_bytes(_png((0, 0, 200)))
        (root / "outside.png").write_bytes(_png((0, 200, 0)))
        _hostile_paths(data)
    value = ("/" if absolute else "") + "/".join(parts) + noise
    calls, real = [], os.open
    os.open = lambda path, *a, **k: calls.append(os.fspath(path)) or real(path, *a, **k)
    try:
        image = preference_dataset._image(Row(data / "x.jsonl", "line 1", {"jpg_0": value}), "jpg_0", data.resolve())
    except SteerError as e:
        assert "\n" not in str(e) and "line 1" in str(e)
        image = None
    finally:
        os.open = real
    for p in calls:
        p = Path(p)
        assert data.resolve() in p.parents and p.is_file() and not p.is_symlink(), (value, p)
    if image is not None:
        assert len(calls) == 1


# ---- 6: a changed dataset under --resume; a dataset that runs out ------------------------------------------
def _kto_cfg(path, **kw):
    return KTOConfig(source="dataset", dataset=str(path), max_steps=3, checkpoint_every=1, train_batch_size=2,
                     learning_rate=1e-2, beta=500.0, target_modules=WIDE, shuffle_buffer=4, **kw)


def _flip_labels(rows):
    return [dict(r, label_0=1.0 - r["label_0"]) for r in rows]


@pytest.mark.parametrize("change", ["flip", "captions", "shrink"])
def test_resume_refuses_a_changed_dataset_naming_it(tmp_path, change):
    rows = _rows(8, ties=0)
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    with pytest.raises(Interrupt):
        kto(tiny_process(steps=2), None, [], _kto_cfg(path), out_dir=tmp_path / "run", callback=_stop_at(2))
    changed = {"flip": _flip_labels(rows), "captions": [dict(r, caption="something else") for r in rows],
               "shrink": rows[:2]}[change]
    write_parquet(path, changed)
    with pytest.raises(SteerError) as e:
        kto(tiny_process(steps=2), None, [], _kto_cfg(path), out_dir=tmp_path / "run", resume=True)
    message = str(e.value)
    assert "dataset_contents" in message and str(path) in message and "\n" not in message, message
    write_parquet(path, rows)  # the same data again: the resume goes on
    kto(tiny_process(steps=2), None, [], _kto_cfg(path), out_dir=tmp_path / "run", resume=True)


def test_fingerprint_follows_the_bytes_of_every_data_file(tmp_path):
    rows = _rows(4, ties=0)
    a = write_parquet(tmp_path / "a.parquet", rows)
    write_parquet(tmp_path / "b.parquet", rows)
    first = fingerprint(str(tmp_path))
    assert fingerprint(str(tmp_path)) == first and first.endswith("of 2 file(s)")
    write_parquet(a, _flip_labels(rows))
    assert fingerprint(str(tmp_path)) != first
    j = _jsonl(tmp_path / "j", [_row()])
    before = fingerprint(str(j))
    j.write_text(j.read_text().replace("red", "blue"))
    assert fingerprint(str(j)) != before


@FAST
@given(rows=st.lists(st.tuples(st.text(max_size=20), st.sampled_from([0.0, 0.5, 1.0])), min_size=1, max_size=6),
       at=st.integers(0, 10_000), byte=st.integers(1, 255), cut=st.integers(1, 50))
def test_any_edit_of_the_data_changes_the_fingerprint(tmp_path_factory, rows, at, byte, cut):
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as d:
        path = _jsonl(Path(d), [_row(caption=c, label=y) for c, y in rows])
        data = path.read_bytes()
        before = fingerprint(str(path))
        k = at % len(data)
        for edited in (data[:k] + bytes([data[k] ^ byte]) + data[k + 1:], data[:max(0, len(data) - cut)]):
            path.write_bytes(edited)
            assert fingerprint(str(path)) != before
        path.write_bytes(data)
        assert fingerprint(str(path)) == before


def test_a_resumed_stream_past_the_end_of_a_shrunk_dataset_is_one_line_not_stopiteration(tmp_path):
    path = write_parquet(tmp_path / "pairs.parquet", _rows(4, ties=0))
    with pytest.raises(SteerError, match=r"ran out after 4 rows .*checkpoint had read 9.*--overwrite"):
        PairStream(_trainer(path), position=9)


# ---- 8: no connection for local data -----------------------------------------------------------------------
GUARD = """
import socket, sys
def refuse(*a, **k):
    raise SystemExit("network: " + repr(a[:2]))
socket.socket.connect = socket.socket.connect_ex = refuse
socket.create_connection = socket.getaddrinfo = socket.gethostbyname = refuse
from types import SimpleNamespace
from steer.finetune import DPOConfig
from steer.finetune.preference_dataset import PairStream, fingerprint
for path in sys.argv[1:]:
    trainer = SimpleNamespace(config=DPOConfig(source="dataset", dataset=path, shuffle_buffer=2), rank=0, world=1)
    stream = PairStream(trainer)
    for _ in range(5):
        stream.next_pair()
    fingerprint(path)
print("read without a connection")
"""


def test_reading_a_local_dataset_opens_no_connection_even_without_hf_hub_offline(tmp_path):
    parquet = write_parquet(tmp_path / "pairs.parquet", _rows(6, ties=1))
    jsonl = write_jsonl(tmp_path / "j", _rows(6, ties=1))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE")}  # HF_HUB_OFFLINE unset
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, "-c", GUARD, str(parquet), str(jsonl)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0 and "read without a connection" in done.stdout, done.stderr[-2000:]


# ---- 10: an all-ties dataset is a quick error ------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 3, 50])
def test_an_all_ties_dataset_fails_after_one_pass(tmp_path, monkeypatch, n):
    path = write_parquet(tmp_path / "ties.parquet", _rows(n, ties=n))
    opens = []
    real = preference_dataset.open_stream
    monkeypatch.setattr(preference_dataset, "open_stream", lambda *a, **k: opens.append(1) or real(*a, **k))
    started = time.monotonic()
    assert f"all {n} rows are ties" in _error(path)
    assert len(opens) == 1 and time.monotonic() - started < 10


def test_ties_then_a_pair_after_a_resume_mid_pass_still_reads_the_pair(tmp_path):
    path = write_parquet(tmp_path / "pairs.parquet", _rows(6, ties=5))  # one usable row of six
    stream = PairStream(_trainer(path), position=3)  # mid pass: the usable row may lie behind
    for _ in range(3):
        assert stream.next_pair()[0]


# ---- one clear line for each malformed cell, row, file and image ------------------------------------------------
CELLS = [  # (column, value, expected words)
    ("caption", 7, "caption is int"), ("caption", None, "caption is NoneType"), ("caption", ["a"], "caption is list"),
    ("label_0", "1", "label_0 must be"), ("label_0", None, "label_0 must be"), ("label_0", [1], "label_0 must be"),
    ("label_0", True, "label_0 must be"), ("label_0", 0.25, "label_0 must be"), ("jpg_0", 5, "jpg_0 is int"),
    ("jpg_0", [1, 2], "jpg_0 is list"), ("jpg_0", {"bytes": None, "path": None}, "has no jpg_0 image"),
    ("jpg_0", "", "has no jpg_0 image"), ("jpg_0", 1.5, "jpg_0 is float"),
]


@pytest.mark.parametrize("column,value,words", CELLS)
def test_cells_of_the_wrong_type_name_the_file_and_line(folder, column, value, words):
    path = _jsonl(folder, [_row(), _row(), {**_row(), column: value}])
    message = _error(path, pairs=3)
    assert words in message and "pairs.jsonl" in message and "line 3" in message, message


def test_parquet_columns_of_the_wrong_type_name_the_file_and_column_before_reading(tmp_path):
    rows = _rows(3, ties=0)
    for column, value, words in (("caption", 7, "column caption holds int64, not text"),
                                 ("label_0", "yes", "column label_0 holds string, not numbers"),
                                 ("label_0", True, "column label_0 holds bool, not numbers"),
                                 ("jpg_1", 3, "column jpg_1 holds int64, not image bytes"),
                                 ("jpg_0", [1, 2], "column jpg_0 holds list<")):
        bad = [dict(r, **{column: value}) for r in rows]  # a Parquet column has one type
        path = write_parquet(tmp_path / f"{column}.parquet", bad)
        message = _error(path)
        assert words in message and f"{column}.parquet" in message, message
    nulls = write_parquet(tmp_path / "nulls.parquet", [dict(r, label_0=None) for r in rows])  # a null column
    assert "row index 0: label_0 must be 1" in _error(nulls)


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                     max_leaves=6)


@FAST
@given(cells=st.fixed_dictionaries({}, optional={c: _JSON for c in ("caption", "jpg_0", "jpg_1", "label_0")}),
       extra=st.dictionaries(st.text(max_size=6), _JSON, max_size=2))
def test_any_json_row_is_read_or_refused_in_one_line_naming_it(tmp_path_factory, cells, extra):
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as d:
        folder = Path(d)
        (folder / "a.png").write_bytes(_png((200, 0, 0)))
        path = _jsonl(folder, [{**extra, **cells}])
        try:
            PairStream(_trainer(path)).next_pair()
        except SteerError as e:
            assert "\n" not in str(e) and "\r" not in str(e), str(e)
            assert ("pairs.jsonl" in str(e) and "line 1" in str(e)) or "ties" in str(e), str(e)


@FAST
@given(lines=st.lists(st.binary(max_size=40), min_size=1, max_size=4))
def test_any_bytes_as_a_jsonl_file_are_read_or_refused_in_one_line(tmp_path_factory, lines):
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as d:
        path = Path(d) / "pairs.jsonl"
        path.write_bytes(b"\n".join(lines))
        try:
            PairStream(_trainer(path)).next_pair()
        except SteerError as e:
            assert "\n" not in str(e) and "pairs.jsonl" in str(e), str(e)


@FAST
@given(data=st.binary(max_size=300), cut=st.integers(0, 400))
def test_any_bytes_as_an_image_or_a_parquet_file_are_refused_in_one_line(tmp_path_factory, data, cut):
    good = _png((10, 20, 30))
    for blob in (data, good[:cut], good[:cut] + data):
        try:
            preference_dataset._decode(_io.BytesIO(blob), "dataset file 'x' row index 0: jpg_0 (bytes)")
        except SteerError as e:
            assert "\n" not in str(e) and "row index 0" in str(e)
    with tempfile.TemporaryDirectory(dir=tmp_path_factory.getbasetemp()) as d:
        path = Path(d) / "pairs.parquet"
        path.write_bytes(data)
        with pytest.raises(SteerError) as e:
            PairStream(_trainer(path)).next_pair()
        assert "\n" not in str(e.value) and "pairs.parquet" in str(e.value)


def test_malformed_files_are_one_line_errors_naming_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def case(name, text=None, data=None):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        if text is not None:
            (folder / name).write_text(text)
        if data is not None:
            (folder / name).write_bytes(data)
        return folder / name

    good = json.dumps(_row())
    assert "line 2 is not valid JSON" in _error(case("bad.jsonl", good + "\n{caption: 1\n" + good + "\n"), pairs=3)
    assert "line 1 is a JSON array, not an object" in _error(case("list.jsonl", "[1, 2]\n"))
    assert "line 1 is not UTF-8" in _error(case("latin.jsonl", data=b'{"caption": "caf\xe9"}\n'))
    assert "line 1 lacks the column(s) jpg_0, jpg_1, label_0" in _error(case("short.jsonl", json.dumps({"caption": "x"}) + "\n"))
    blank = _error(case("blank.jsonl", "\n  \n\t\n\n"))
    assert "blank.jsonl" in blank and "has no rows" in blank
    assert "has no rows" in _error(case("empty.jsonl", ""))
    empty = tmp_path / "empty_parquet"
    empty.mkdir()
    pq.write_table(pa.Table.from_pylist([], schema=pa.table({"caption": ["x"], "jpg_0": [b""], "jpg_1": [b""],
                                                             "label_0": [1.0]}).schema), empty / "e.parquet")
    assert "has no rows (a Parquet table of 0 rows)" in _error(empty / "e.parquet")
    assert "is empty (0 bytes)" in _error(case("zero.parquet", data=b""))
    assert "not a readable Parquet file" in _error(case("junk.parquet", data=b"PAR1 not really"))
    whole = (write_parquet(tmp_path / "whole.parquet", _rows(3, ties=0))).read_bytes()
    assert "not a readable Parquet file" in _error(case("cut.parquet", data=whole[:-20]))


def test_a_folder_of_two_schemas_names_the_odd_file(tmp_path):
    write_parquet(tmp_path / "a.parquet", _rows(3, ties=0))
    write_parquet(tmp_path / "b.parquet", [{"prompt": "x", "image": b"y", "score": 1.0}])
    message = _error(tmp_path)
    assert "b.parquet" in message and "lacks the column(s) caption, jpg_0, jpg_1, label_0" in message
    write_parquet(tmp_path / "b.parquet", [dict(r, label_0=str(r["label_0"])) for r in _rows(3, ties=0)])
    message = _error(tmp_path)  # the same columns, one of another type: named before any row is read
    assert "b.parquet': column label_0 holds string, not numbers" in message, message
    _jsonl(tmp_path, [_row()], "c.jsonl")
    assert "mixes Parquet and JSON lines" in _error(tmp_path)
    other = tmp_path / "j"
    _jsonl(other, [_row()], "a.jsonl")
    _jsonl(other, [{"prompt": "x"}, _row()], "b.jsonl")
    assert "b.jsonl' line 1 lacks the column(s) caption" in _error(other)  # at open, before any row is read


def test_a_corrupt_parquet_page_is_one_line_naming_the_file(tmp_path):
    path = write_parquet(tmp_path / "pairs.parquet", _rows(6, ties=0))
    data = bytearray(path.read_bytes())
    for k in range(8, len(data) // 2, 7):  # scribble over the data pages, keep the footer
        data[k] = 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SteerError) as e:
        stream = PairStream(_trainer(path))
        for _ in range(6):
            stream.next_pair()
    assert "pairs.parquet" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("side", [10_000, 15_000])  # above the cap; above PIL's own error (2 x 89.5 MP)
def test_a_huge_image_is_refused_from_its_header_without_pil_s_warning(folder, side):
    from PIL import Image

    Image.new("1", (side, side)).save(folder / "huge.png")  # 1 bit per pixel: small on disk and in memory
    assert side * side > MAX_IMAGE_PIXELS
    path = _jsonl(folder, [_row(jpg_1="huge.png")])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        message = _error(path)
    assert "MAX_IMAGE_PIXELS" in message and "line 1" in message and "jpg_1" in message, message
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]


def test_an_extreme_aspect_ratio_is_resized_without_resizing_it_whole():
    from PIL import Image

    started = time.monotonic()
    x = to_tensor(Image.new("RGB", (1, 200_000), (255, 0, 0)), 64, 64)  # whole: 64 x 12.8M pixels
    assert x.shape == (3, 64, 64) and float(x[0].mean()) == pytest.approx(1.0)
    assert time.monotonic() - started < 5
    y = to_tensor(Image.new("RGB", (80, 40), (0, 0, 255)), 32, 32)
    assert y.shape == (3, 32, 32) and float(y[2].min()) == pytest.approx(1.0)


def test_a_json_file_holds_json_lines_or_one_array_of_rows(folder):
    rows = [_row(), _row(label=0.0)]
    (folder / "lines.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "array.json").write_text(json.dumps(rows, indent=2))
    for name in ("lines.json", "array.json"):
        stream = PairStream(_trainer(folder / name))
        assert [stream.next_pair()[0] for _ in range(3)] == ["a red cube"] * 3
    (folder / "bad.json").write_text(json.dumps([_row(), 5]))
    assert "bad.json' item 1 is a JSON number, not an object" in _error(folder / "bad.json", pairs=2)


def test_processes_read_disjoint_shards_that_cover_the_dataset(tmp_path):
    rows = [dict(r, caption=f"caption {k}") for k, r in enumerate(_rows(7, ties=0))]
    path = write_parquet(tmp_path / "pairs.parquet", rows)
    seen = []
    for rank in range(2):
        trainer = SimpleNamespace(config=DPOConfig(source="dataset", dataset=str(path), shuffle_buffer=3), rank=rank,
                                  world=2)
        stream = PairStream(trainer)
        seen.append({stream.next_pair()[0] for _ in range(4 - rank)})
    assert not seen[0] & seen[1] and seen[0] | seen[1] == {r["caption"] for r in rows}
    lonely = SimpleNamespace(config=DPOConfig(source="dataset", dataset=str(path)), rank=7, world=8)
    with pytest.raises(SteerError, match="has no rows for process 7 of 8; it needs at least as many rows"):
        PairStream(lonely).next_pair()


def test_an_all_ties_run_fails_in_seconds(tmp_path):
    from steer.finetune import dpo

    path = write_parquet(tmp_path / "ties.parquet", _rows(3, ties=3))
    process = tiny_process(steps=2)
    started = time.monotonic()
    with pytest.raises(SteerError, match="all 3 rows are ties"):
        dpo(process, None, [], DPOConfig(source="dataset", dataset=str(path), max_steps=1), out_dir=tmp_path / "run")
    assert time.monotonic() - started < 20
