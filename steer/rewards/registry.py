"""Reward names, spec strings and the table of every reward.

A spec is comma-separated terms ``name[=weight]``: ``"hps"``, ``"hps=1,clip=0.5"``,
``"image_reward,aesthetic=0.1"``; a term may also be a dotted path ``pkg.module:function`` to a
user function ``fn(images, prompts) -> Tensor[B]`` (or to a ``Reward``), or the URL
``http://HOST:PORT`` of a ``steer serve-reward`` server (``hps=1,http://127.0.0.1:8085=0.5``: a URL's
weight follows its last ``=``). A term ``NAME@frames[:mean|min][:STRIDE]`` scores the image reward
NAME on every STRIDE-th frame of a video and reduces over frames (``hps@frames:min:4``,
``hps@frames,temporal_consistency=0.5``; ``steer.rewards.video``). One term of weight 1 is the reward
itself; anything else is a ``WeightedSum``. ``table()`` lists every reward for the CLI
(``include_forms``: and the URL and per-frame forms).
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Union

import torch

from steer.rewards.base import Reward
from steer.rewards.combine import WeightedSum, as_reward, import_dotted
from steer.rewards.reward_url import is_url, normalize_url
from steer.rewards.video import FrameReward, frames_key, parse_frames

SPEC_EXAMPLE = "'hps' or 'hps=1,clip=0.5'"


@dataclass(frozen=True)
class RewardInfo:
    """One row of the reward table."""

    name: str
    # keyword options -> Reward (imports lazily), or the "module:attr" of one: rewards defined
    # outside this package (the shapes world's) are named, never imported, so steer.rewards
    # depends on nothing above it
    build: Union[str, Callable[..., Reward]]
    differentiable: bool
    weights: str  # files it needs
    source: str  # where to get them
    point_at: str  # option / environment variable naming a local copy
    description: str
    aliases: tuple[str, ...] = ()


def _hps(version: str):
    def build(**kw):
        from steer.rewards.hps import HPSReward

        return HPSReward.from_pretrained(version=version, **kw)
    return build


def _aesthetic(version: str):
    def build(**kw):
        from steer.rewards.aesthetic import AestheticReward

        return AestheticReward.from_pretrained(version=version, **kw)
    return build


def _pickscore(**kw):
    from steer.rewards.pickscore import PickScoreReward

    return PickScoreReward.from_pretrained(**kw)


def _image_reward(**kw):
    from steer.rewards.image_reward import ImageReward

    return ImageReward.from_pretrained(**kw)


def _hpsv3(**kw):
    from steer.rewards.hpsv3 import HPSv3Reward

    return HPSv3Reward.from_pretrained(**kw)


def _clip(**kw):
    from steer.rewards.clip import CLIPReward

    return CLIPReward.from_pretrained(**kw)


def _clip_ot(**kw):
    from steer.rewards.ot import OTClipReward

    return OTClipReward.from_pretrained(**kw)


def _chroma(**kw):
    from steer.rewards.chroma import ChromaReward

    return ChromaReward(**kw)


def _jpeg(**kw):
    from steer.rewards.jpeg import JpegCompressibility

    return JpegCompressibility(**kw)


def _temporal(**kw):
    from steer.rewards.video import TemporalConsistencyReward

    return TemporalConsistencyReward.from_pretrained(**kw)


_CLIP_L = "openai/clip-vit-large-patch14 (transformers dir)"
REWARDS: tuple[RewardInfo, ...] = (
    RewardInfo("shapes-clip", "steer.zoo.shapes.reward:ShapesClipReward", True, "ships with steer",
               "steer/zoo/shapes/weights/clip", "path=",
               "the shapes world's CLIP: exp(logit_scale) * cosine(image, caption)", ("shapes_clip",)),
    RewardInfo("shapes-check", "steer.zoo.shapes.reward:ShapesCheckReward", False, "none", "-", "-",
               "the shapes world's exact checker: 1 if the image satisfies the caption, else 0",
               ("shapes_check",)),
    RewardInfo("shapes-swap", "steer.zoo.shapes.reward:ShapesSwapReward", True, "ships with steer",
               "steer/zoo/shapes/weights/clip", "path=",
               "the shapes CLIP's P(true caption) against its corruptions (swapped relation, order, colours, "
               "shapes): a held-out reward for --eval-reward", ("shapes_swap",)),
    RewardInfo("shapes-ot", "steer.zoo.shapes.reward:shapes_ot", True, "ships with steer",
               "steer/zoo/shapes/weights/clip", "path=",
               "the shapes CLIP's PISCES-style OT reward: partial OT of caption tokens to image patches + batch OT "
               "term (needs POT: pip install steer[ot])", ("shapes_ot",)),
    RewardInfo("hps", _hps("v2.1"), True, "HPS_v2.1_compressed.pt", "https://huggingface.co/xswu/HPSv2",
               "path= / STEER_HPS_PATH", "HPSv2.1: cosine(image, text) of the HPS-tuned open_clip ViT-H-14 (~0.2-0.35)",
               ("hpsv2.1", "hps_v2.1")),
    RewardInfo("hps_v2.0", _hps("v2.0"), True, "HPS_v2_compressed.pt", "https://huggingface.co/xswu/HPSv2",
               "path= / STEER_HPS_PATH", "HPSv2.0: cosine(image, text), open_clip ViT-H-14", ("hpsv2", "hpsv2.0")),
    RewardInfo("pickscore", _pickscore, True, "yuvalkirstain/PickScore_v1 (transformers dir)",
               "https://huggingface.co/yuvalkirstain/PickScore_v1", "path= / STEER_PICKSCORE_PATH",
               "PickScore: logit_scale.exp() * cosine (~18-23)", ("pick", "pick_score")),
    RewardInfo("image_reward", _image_reward, True, "ImageReward.pt + bert-base-uncased vocab.txt",
               "https://huggingface.co/THUDM/ImageReward ; https://huggingface.co/bert-base-uncased",
               "path= / STEER_IMAGE_REWARD_PATH ; tokenizer_path= / STEER_BERT_TOKENIZER_PATH",
               "ImageReward v1.0 (BLIP + BERT + MLP), normalized (~N(0,1))", ("imagereward", "ir")),
    RewardInfo("hpsv3", _hpsv3, True, "HPSv3.safetensors + Qwen2-VL-7B-Instruct tokenizer (tokenizer.json)",
               "https://huggingface.co/MizzenAI/HPSv3 ; https://huggingface.co/Qwen/Qwen2-VL-7B-Instruct",
               "path= / STEER_HPSV3_PATH ; tokenizer_path= / STEER_QWEN2VL_PATH",
               "HPSv3 (Qwen2-VL-7B + reward head): mu at the <|Reward|> token, unbounded (best models ~10.3-10.6)",
               ("hps_v3", "hpsv3.0")),
    RewardInfo("clip", _clip, True, _CLIP_L, "https://huggingface.co/openai/clip-vit-large-patch14",
               "path= / STEER_CLIP_PATH", "CLIP score: 100 * cosine(image, text), CLIP ViT-L/14", ("clip_score", "clipscore")),
    RewardInfo("clip-ot", _clip_ot, True, _CLIP_L + " + POT (pip install steer[ot])",
               "https://huggingface.co/openai/clip-vit-large-patch14", "path= / STEER_CLIP_PATH",
               "PISCES-style OT reward on a transformers CLIP: partial OT of prompt tokens to image patches + "
               "batch OT term", ("clip_ot",)),
    RewardInfo("aesthetic", _aesthetic("v2"), True, "sac+logos+ava1-l14-linearMSE.pth + " + _CLIP_L,
               "https://github.com/christophschuhmann/improved-aesthetic-predictor",
               "path= / STEER_AESTHETIC_PATH ; clip_path= / STEER_CLIP_PATH",
               "LAION aesthetic predictor v2: MLP on normalized CLIP-L/14 embedding (1-10)",
               ("aesthetic_v2", "laion_aesthetic")),
    RewardInfo("aesthetic_v1", _aesthetic("v1"), True, "sa_0_4_vit_l_14_linear.pth + " + _CLIP_L,
               "https://github.com/LAION-AI/aesthetic-predictor",
               "path= / STEER_AESTHETIC_PATH ; clip_path= / STEER_CLIP_PATH",
               "LAION aesthetic predictor v1: linear head on normalized CLIP-L/14 embedding", ()),
    RewardInfo("chroma", _chroma, True, "none", "-", "-", "mean per-pixel chroma max(RGB) - min(RGB): saturated "
               "colour (on the shapes world: object size)", ("saturation", "colorfulness")),
    RewardInfo("jpeg", _jpeg, False, "none", "-", "-", "JPEG compressibility (DDPO): -kB at quality 95",
               ("jpeg_compressibility", "compressibility")),
    RewardInfo("temporal_consistency", _temporal, True, _CLIP_L + " (or any transformers CLIP dir)",
               "https://huggingface.co/openai/clip-vit-large-patch14", "path= / STEER_CLIP_PATH",
               "videos: mean cosine of consecutive frames' CLIP image embeddings (1 = still)",
               ("temporal", "temporal_clip")),
    RewardInfo("shapes-temporal", "steer.zoo.shapes.reward:shapes_temporal", True, "ships with steer",
               "steer/zoo/shapes/weights/clip", "path=",
               "videos: temporal_consistency on the shapes world's CLIP (offline; for tests and demos)",
               ("shapes_temporal",)),
)
# spec terms that are not names: listed by ``steer rewards``, never looked up by name
SPEC_FORMS: tuple[RewardInfo, ...] = (
    RewardInfo("http://HOST:PORT", "steer.rewards.remote:HttpReward", False, "those of the served spec, on the server",
               "`steer serve-reward SPEC --port PORT` in the reward's own environment",
               "the URL, e.g. hps=1,http://127.0.0.1:8085=0.5",
               "any reward spec served over HTTP by `steer serve-reward` (no gradients cross HTTP)"),
    RewardInfo("NAME@frames[:mean|min][:STRIDE]", "steer.rewards.video:FrameReward", True,
               "those of NAME", "-", "the spec term, e.g. hps@frames:min:4=0.5",
               "videos: the image reward NAME on every STRIDE-th frame (default 1), mean or min over frames "
               "(differentiable iff NAME is)"),
)
COLUMNS = ("name", "differentiable", "weights", "source", "point_at", "description")


def table(include_forms: bool = False) -> list[dict[str, object]]:
    """One dict per reward with the ``COLUMNS`` keys, for ``steer rewards`` to print: ``differentiable``
    is a bool, the others are strings. ``include_forms``: also the spec forms (``http://HOST:PORT``)."""
    rows = REWARDS + (SPEC_FORMS if include_forms else ())
    return [{"name": r.name, "differentiable": r.differentiable, "weights": r.weights,
             "source": r.source, "point_at": r.point_at, "description": r.description} for r in rows]


def _by_name() -> dict[str, RewardInfo]:
    out = {}
    for info in REWARDS:
        for key in (info.name,) + info.aliases:
            out[key] = info
    return out


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def info(name: str) -> RewardInfo:
    """The table row of ``name`` (or an alias); unknown names suggest the closest known one."""
    known = _by_name()
    if _key(name) in known:
        return known[_key(name)]
    close = difflib.get_close_matches(_key(name), list(known), n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown reward {name!r}{hint} Known rewards: {', '.join(r.name for r in REWARDS)} "
                     f"(or a dotted path 'pkg.module:function', or a served reward's URL http://HOST:PORT)")


def parse_spec(spec: str) -> list[tuple[str, float]]:
    """``"hps=1,clip=0.5"`` -> ``[("hps", 1.0), ("clip", 0.5)]`` (names validated, weights finite)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty reward spec; write e.g. {SPEC_EXAMPLE}")
    terms, seen = [], set()
    for raw in spec.split(","):
        term = raw.strip()
        name, sep, weight_text = term.rpartition("=") if is_url(term) and "=" in term else term.partition("=")
        name = name.strip()
        if not name:
            raise ValueError(f"reward spec {spec!r} has an empty term; write e.g. {SPEC_EXAMPLE}")
        weight = _parse_weight(spec, name, weight_text) if sep else 1.0
        key = _key_of(name)
        if key in seen:
            raise ValueError(f"reward {key!r} appears twice in spec {spec!r}; give it one weight")
        seen.add(key)
        terms.append((key, weight))
    return terms


def _key_of(name: str) -> str:
    """A spec term's canonical name: a URL normalized, a dotted path as written, a registry name resolved;
    a per-frame term as ``BASE@frames:REDUCE:STRIDE``."""
    base, frames = parse_frames(name)
    key = normalize_url(base) if is_url(base) else base if ":" in base else info(base).name
    return frames_key(key, frames)


def _parse_weight(spec: str, name: str, text: str) -> float:
    try:
        weight = float(text)
    except ValueError:
        raise ValueError(f"reward spec {spec!r}: weight {text.strip()!r} of {name!r} is not a number; "
                         f"write e.g. {SPEC_EXAMPLE}") from None
    if not math.isfinite(weight):
        raise ValueError(f"reward spec {spec!r}: weight of {name!r} must be finite, got {text.strip()!r}")
    return weight


def build(name: str, **options) -> Reward:
    """One reward by registry name (options go to its ``from_pretrained``), URL (options go to
    ``HttpReward``: ``read_timeout=``, ``image_format=``, ...) or dotted path; ``NAME@frames...`` is
    NAME (built with the options) wrapped in a ``FrameReward``."""
    base, frames = parse_frames(name)
    if frames is not None:
        return FrameReward(build(base, **options), reduce=frames[0], stride=frames[1])
    if is_url(name):
        from steer.rewards.remote import HttpReward

        return HttpReward(name, **options)
    if ":" in name:
        return as_reward(name)
    factory = info(name).build
    return (import_dotted(factory) if isinstance(factory, str) else factory)(**options)


def load(spec, device: Optional[torch.device | str] = None, dtype: Optional[torch.dtype] = None,
         options: Optional[Mapping[str, Mapping]] = None) -> Reward:
    """A ``Reward`` from a spec string, a ``Reward``, or a callable; moved to ``device`` / ``dtype``.

    ``options``: per-reward keyword options, e.g. ``{"hps": {"path": "/w/HPS_v2.1_compressed.pt"}}``.
    """
    if not isinstance(spec, str):
        return _place(as_reward(spec), device, dtype)
    options = {_key_of(k): v for k, v in (options or {}).items()}
    terms = parse_spec(spec)
    if all(w == 0 for _, w in terms):  # refused before any reward model loads
        raise ValueError(f"reward spec {spec!r}: every weight is 0, so it scores nothing; give at least one reward "
                         f"a nonzero weight (e.g. {terms[0][0]}=1)")
    # a per-frame term takes its own options, else those of the reward it wraps
    rewards = [(w, build(name, **options.get(name, options.get(parse_frames(name)[0], {})))) for name, w in terms]
    reward = rewards[0][1] if len(rewards) == 1 and rewards[0][0] == 1.0 else WeightedSum(rewards)
    return _place(reward, device, dtype)


def _place(reward: Reward, device, dtype) -> Reward:
    if (device is not None or dtype is not None) and hasattr(reward, "to"):
        reward.to(device=device, dtype=dtype)
    return reward
