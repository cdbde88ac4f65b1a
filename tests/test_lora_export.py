"""steer lora export: steer's diffusers-format LoRA -> the kohya / ComfyUI layout, for SD 1.x, SDXL
and FLUX.1. Checked against diffusers' own kohya loader (``pipe.load_lora_weights(<kohya file>)`` gives
the same fused weights as loading steer's diffusers-format folder) and by an exact round trip."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from steer.errors import SteerError
from steer.finetune import lora
from steer.finetune import kohya_unet
from steer.finetune import lora_export as lx
from tests.fixtures.tiny import build

RANK, ALPHA = 2, 4.0  # α ≠ r: a dropped alpha would show

FLUX_DOUBLE = tuple(f"transformer_blocks.0.{m}" for m in (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.2", "norm1.linear", "norm1_context.linear"))
# diffusers' kohya FLUX converter hard-codes FLUX.1's single-block widths (3072, 12288), so the tiny
# transformer's single blocks are checked against the kohya update formula instead (test_flux_fused_update)


def _trained(family: str, tmp_path, targets=lora.DEFAULT_TARGETS):
    """A tiny pipeline with a LoRA whose B is non-zero (peft starts B at 0), saved by save_lora."""
    pipe = build(family)
    lora.attach_lora(pipe, RANK, ALPHA, targets)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in lora.trainable_parameters(pipe):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    directory = lora.save_lora(pipe, tmp_path / "run" / "lora")
    return pipe, directory


def _fused_weights(family: str, source: str) -> dict:
    pipe = build(family)
    pipe.load_lora_weights(source)
    pipe.fuse_lora()
    pipe.unload_lora_weights()
    return {k: v.clone() for k, v in lora.denoiser(pipe).state_dict().items()}


CASES = [("sd", "sd", lora.DEFAULT_TARGETS, 1), ("sdxl", "sdxl", lora.DEFAULT_TARGETS, 1),
         ("flux", "flux", FLUX_DOUBLE, None)]


@pytest.mark.parametrize("family,export_family,targets,lpb", CASES)
def test_diffusers_loads_the_export_like_the_original(family, export_family, targets, lpb, tmp_path):
    _, directory = _trained(family, tmp_path, targets)
    out = lx.export_lora(directory, tmp_path / "kohya.safetensors", export_family, lpb)
    state = load_file(str(out))
    assert all(k.startswith("lora_unet_") for k in state)
    if family == "sdxl":  # SGM names
        assert any("input_blocks" in k or "output_blocks" in k for k in state)
        assert not any("down_blocks" in k or "up_blocks" in k for k in state)
    elif family == "sd":  # kohya's SD 1.x names: the diffusers path
        assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_out_0.lora_down.weight" in state
    else:
        assert "lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight" in state
        assert "lora_unet_double_blocks_0_txt_attn_qkv.lora_down.weight" in state  # add_q_proj alone, padded
    reference = _fused_weights(family, str(directory))
    exported = _fused_weights(family, str(out))
    base = {k: v for k, v in lora.denoiser(build(family)).state_dict().items()}
    assert reference.keys() == exported.keys()
    changed = [k for k in reference if not torch.equal(reference[k], base[k])]
    assert len(changed) >= len(targets) // 2  # the LoRA did change the weights
    for k in reference:
        torch.testing.assert_close(exported[k], reference[k], rtol=1e-6, atol=1e-7, msg=k)


def test_sgm_names():
    # the LDM / SGM names of an SD-1.5-shaped UNet (layers_per_block 2), as kohya writes them for SDXL
    assert kohya_unet.unet_to_ldm("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "sd") == \
        "input_blocks.4.1.transformer_blocks.0.attn1.to_q"
    assert kohya_unet.unet_to_ldm("mid_block.attentions.0.proj_in", "sd") == "middle_block.1.proj_in"
    assert kohya_unet.unet_to_ldm("up_blocks.3.attentions.2.transformer_blocks.0.attn2.to_out.0", "sd") == \
        "output_blocks.11.1.transformer_blocks.0.attn2.to_out.0"
    assert kohya_unet.unet_to_ldm("down_blocks.0.resnets.1.conv2", "sd") == "input_blocks.2.0.out_layers.3"
    assert kohya_unet.unet_to_ldm("down_blocks.0.downsamplers.0.conv", "sd") == "input_blocks.3.0.op"
    assert kohya_unet.unet_to_ldm("up_blocks.1.upsamplers.0.conv", "sd") == "output_blocks.5.2.conv"
    assert kohya_unet.unet_to_ldm("up_blocks.0.upsamplers.0.conv", "sd") == "output_blocks.2.1.conv"
    for name in ("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "down_blocks.0.resnets.1.conv2",
                 "down_blocks.0.downsamplers.0.conv", "up_blocks.1.upsamplers.0.conv", "mid_block.resnets.1.conv1",
                 "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.0.proj", "conv_in", "conv_out",
                 "time_embedding.linear_1", "add_embedding.linear_2", "down_blocks.1.resnets.0.conv_shortcut"):
        ldm = kohya_unet.unet_to_ldm(name, "sd")
        assert kohya_unet.ldm_to_unet(kohya_unet.ldm_path(ldm.replace(".", "_")), 2) == name


@pytest.mark.parametrize("family,targets", [("sd", lora.DEFAULT_TARGETS), ("sdxl", lora.DEFAULT_TARGETS),
                                            ("flux", lora.DEFAULT_TARGETS), ("flux", FLUX_DOUBLE)])
def test_round_trip_is_exact(family, targets, tmp_path):
    pipe, directory = _trained(family, tmp_path, targets)
    out = lx.export_lora(directory, tmp_path / "k.safetensors", family, 1 if family != "flux" else None)
    back, alphas = lx.import_kohya(out)
    saved = load_file(str(directory / lx.WEIGHTS))
    assert back.keys() == saved.keys()
    for k in saved:
        assert torch.equal(back[k], saved[k]), k
    assert set(alphas.values()) == {ALPHA}


def test_flux_fused_update(tmp_path):
    """linear1 = [to_q; to_k; to_v; proj_mlp]: (alpha / rank) · up · down is the stacked per-module
    updates, zero rows for the untargeted proj_mlp (what ComfyUI adds to the fused weight)."""
    pipe, directory = _trained("flux", tmp_path)
    out = load_file(str(lx.export_lora(directory, tmp_path / "k.safetensors")))  # family inferred
    state = lora.lora_state_dict(pipe)
    scale = ALPHA / RANK

    def delta(name):
        return scale * state[f"{name}.lora_B.weight"] @ state[f"{name}.lora_A.weight"]

    key = "lora_unet_single_blocks_0_linear1"
    down, up, alpha = out[f"{key}.lora_down.weight"], out[f"{key}.lora_up.weight"], out[f"{key}.alpha"]
    assert down.shape[0] == 4 * RANK and alpha.item() == 4 * ALPHA
    fused = (alpha / down.shape[0]) * up @ down
    p = "single_transformer_blocks.0.attn."
    width = down.shape[1]
    expected = torch.cat([delta(p + "to_q"), delta(p + "to_k"), delta(p + "to_v"), torch.zeros(4 * width, width)])
    torch.testing.assert_close(fused, expected, rtol=1e-6, atol=1e-7)


def test_cli_export_and_errors(tmp_path):
    from steer.cli import app

    _, directory = _trained("sd", tmp_path)
    run = directory.parent
    out = tmp_path / "c.safetensors"
    r = CliRunner().invoke(app, ["lora", "export", str(run), "--format", "comfyui", "--out", str(out),
                                 "--layers-per-block", "1"])
    assert r.exit_code == 0, r.output
    assert out.is_file() and any(k.startswith("lora_unet_down_blocks_") for k in load_file(str(out)))
    r = CliRunner().invoke(app, ["lora", "export", str(directory)])  # default: beside lora/
    assert r.exit_code == 0, r.output
    assert (run / "lora_comfyui.safetensors").is_file()

    r = CliRunner().invoke(app, ["lora", "export", str(run), "--format", "a1111", "--out", str(out)])
    assert r.exit_code == 2 and "kohya, comfyui" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["lora", "export", str(run), "--family", "sd3", "--out", str(out)])
    assert r.exit_code == 2 and "supported: SD 1.x/2.x (sd), SDXL (sdxl), FLUX.1 (flux)" in r.output
    r = CliRunner().invoke(app, ["lora", "export", str(tmp_path / "nowhere"), "--out", str(out)])
    assert r.exit_code == 2 and "pytorch_lora_weights.safetensors" in r.output


def test_unsupported_family_is_one_line(tmp_path):
    _, directory = _trained("sd3", tmp_path)
    with pytest.raises(SteerError, match="supported: SD 1.x/2.x"):
        lx.export_lora(directory, tmp_path / "x.safetensors")
    with pytest.raises(SteerError, match=r"end in \.safetensors"):
        lx.export_lora(directory, tmp_path / "x.ckpt", "flux")
