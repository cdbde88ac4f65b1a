"""Issue 29: the remaining unclear messages, each one line naming the file, the argument or the fix."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import steer
from steer.errors import SteerError
from steer.pipelines import loading
from tests.fixtures.tiny import build


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny") / "sd"
    build("sd").save_pretrained(folder)
    return folder


@pytest.fixture
def copy(saved, tmp_path):
    folder = tmp_path / "sd"
    shutil.copytree(saved, folder)
    return folder


def _index(folder, **changes):
    data = json.loads((folder / "model_index.json").read_text())
    data.update(changes)
    (folder / "model_index.json").write_text(json.dumps(data))


@pytest.mark.parametrize("text,says", [("{not json", "is not valid JSON"), ("[1, 2]", "holds a JSON list")])
def test_model_index_broken_or_not_an_object(copy, text, says):
    (copy / "model_index.json").write_text(text)
    with pytest.raises(SteerError) as err:
        loading.load(copy)
    assert "model_index.json" in one_line(err) and says in one_line(err)


@pytest.mark.parametrize("value", [3, ["StableDiffusionPipeline"]])
def test_class_name_of_the_wrong_type(copy, value):
    _index(copy, _class_name=value)
    with pytest.raises(SteerError) as err:
        loading.load(copy)
    assert "_class_name must be" in one_line(err) and "model_index.json" in one_line(err)


def test_model_is_a_file(saved):
    with pytest.raises(loading.ModelNotFoundError) as err:
        loading.load(saved / "model_index.json")
    assert "is a file" in one_line(err) and str(saved) in one_line(err)


def test_pickled_bin_weights_refused_before_diffusers_warns(copy, capfd):
    from safetensors.torch import load_file

    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), copy / "unet" / "diffusion_pytorch_model.bin")
    weights.unlink()
    capfd.readouterr()
    with pytest.raises(SteerError) as err:
        loading.load(copy)
    assert "pickled" in one_line(err) and "unet" in one_line(err) and "safetensors" in one_line(err)
    out, errout = capfd.readouterr()
    assert "unsafe" not in out + errout


def test_missing_component_folder(copy):
    shutil.rmtree(copy / "unet")
    with pytest.raises(loading.ModelNotFoundError) as err:
        loading.load(copy)
    assert "'unet'" in one_line(err) and "missing" in one_line(err)
