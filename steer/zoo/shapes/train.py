"""Reproduce the whole shipped shapes world: the shapes CLIP, then the text-to-image pipeline
conditioned on its text tower.

    python -m steer.zoo.shapes.train --out DIR [--clip-minutes 15] [--pipeline-minutes 40]

writes ``DIR/clip`` (``steer.zoo.shapes.clip(DIR/clip)`` loads it) and ``DIR/pipeline``
(``steer.zoo.shapes.pipeline(path=DIR/pipeline)``), the same layout as the package's
``steer/zoo/shapes/weights`` (``--out steer/zoo/shapes/weights`` replaces the shipped models), and
``DIR/report.json`` with the wall-clock time of each stage and the evaluations: CLIP retrieval and
relation-swap accuracy (``clip_eval``), and the pipeline's checker accuracy on single-object and
held-out relational captions. Both stages are bounded by wall-clock minutes, so the run fits its
budget on a slow machine (with fewer optimisation steps); defaults total 55 minutes of training plus
about 3 of rendering and evaluation on 2 CPU cores. The checker is only used to evaluate.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for clip/, pipeline/ and report.json")
    ap.add_argument("--clip-minutes", type=float, default=15.0)
    ap.add_argument("--pipeline-minutes", type=float, default=40.0)
    ap.add_argument("--clip-steps", type=int, default=10000, help="step cap for the CLIP (minutes usually bind)")
    ap.add_argument("--canonical-positives", action="store_true",
                    help="CLIP: equivalent spellings are positives (see train_clip; not the shipped recipe)")
    ap.add_argument("--perpendicular-negatives", action="store_true",
                    help="CLIP: the other axis's relations join the hard negatives (not the shipped recipe)")
    ap.add_argument("--relation-weight", type=float, default=1.0, help="CLIP: weight of the relation term")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-images", type=int, default=30000, help="pipeline training scenes")
    args = ap.parse_args(argv)

    import torch

    from steer.zoo.shapes import train_pipeline
    from steer.zoo.shapes.clip_eval import evaluate as evaluate_clip
    from steer.zoo.shapes.train_clip import ClipTrainConfig, train as train_clip

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg: str) -> None:
        print(f"[{time.time() - t0:6.0f}s] {msg}", flush=True)

    report: dict = {"threads": args.threads, "torch_threads": torch.get_num_threads(),
                    "clip_recipe": {"relation_weight": args.relation_weight, "minutes": args.clip_minutes,
                                    "canonical_positives": args.canonical_positives,
                                    "perpendicular_negatives": args.perpendicular_negatives},
                    "pipeline_minutes": args.pipeline_minutes}
    model, tokenizer = train_clip(ClipTrainConfig(out=str(out / "clip"), steps=args.clip_steps,
                                                  max_minutes=args.clip_minutes, threads=args.threads,
                                                  relation_weight=args.relation_weight,
                                                  canonical_positives=args.canonical_positives,
                                                  perpendicular_negatives=args.perpendicular_negatives), log=log)
    report["clip_seconds"] = round(time.time() - t0, 1)
    report["clip"] = evaluate_clip(model, tokenizer)
    for key, value in report["clip"].items():
        log(f"clip {key}: {value:.1%}")
    t1 = time.time()
    report["pipeline"] = train_pipeline.train(out / "pipeline", minutes=args.pipeline_minutes,
                                              n_images=args.n_images, threads=args.threads,
                                              clip_dir=out / "clip", log=log)
    report["pipeline_seconds"] = round(time.time() - t1, 1)
    report["total_seconds"] = round(time.time() - t0, 1)
    report["weight_bytes"] = sum(p.stat().st_size for p in out.rglob("*.safetensors"))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    log(f"done in {report['total_seconds'] / 60:.1f} min; weights {report['weight_bytes'] / 1e6:.1f} MB; "
        f"report in {out / 'report.json'}")
    return report


if __name__ == "__main__":
    main()
