"""``python -m steer.zoo.shapes.train`` end to end at a tiny budget: it writes a base CLIP, the reward
CLIP fine-tuned from it and a pipeline on the base CLIP's text tower, which load with the package's
loaders and plain ``from_pretrained``, and a report with times and accuracies."""
import json

import torch
from transformers import CLIPTextModel

from steer.zoo.shapes import clip, pipeline
from steer.zoo.shapes.train import main


def test_train_writes_loadable_clip_pipeline_and_report(tmp_path):
    report = main(["--out", str(tmp_path), "--clip-minutes", "0.05", "--reward-minutes", "0.05",
                   "--pipeline-minutes", "0.15",
                   "--n-images", "256", "--clip-steps", "3", "--clip-pool", "512", "--eval-scenes", "100",
                   "--eval-captions", "4", "8"])
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    assert set(on_disk["pipeline"]) == {"single", "relation"} and 0 <= on_disk["pipeline"]["single"] <= 1
    assert on_disk["base_clip_recipe"]["perpendicular_negatives"] is False
    assert on_disk["clip_recipe"]["perpendicular_negatives"] is True and on_disk["clip_recipe"]["init"] == "base_clip"
    assert set(on_disk["clip"]) == set(on_disk["base_clip"]) and on_disk["clip_seconds"] > 0 and on_disk["total_seconds"] >= on_disk["pipeline_seconds"]
    assert 0 < on_disk["weight_bytes"] <= 20e6
    loaded = clip(tmp_path / "clip")
    assert loaded.model.config.vision_config.image_size == 32
    pipe = pipeline(path=tmp_path / "pipeline")
    base = CLIPTextModel.from_pretrained(str(tmp_path / "base_clip"))
    assert torch.allclose(pipe.text_encoder.get_input_embeddings().weight.float(),
                          base.get_input_embeddings().weight, atol=1e-2)  # saved in fp16
    out = pipe("a red circle", num_inference_steps=2, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
