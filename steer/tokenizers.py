"""The CLIP BPE tokenizer built offline (no hub), for the rewards and the shapes world.

open_clip ships OpenAI's ``bpe_simple_vocab_16e6.txt.gz``. The vocabulary is the 256 byte
symbols, the same with ``</w>``, one token per merge, then ``<|startoftext|>`` and
``<|endoftext|>`` — exactly how open_clip's ``SimpleTokenizer`` and transformers' ``CLIPTokenizer``
build it. Keeping the first ``num_merges`` merges gives a genuine smaller CLIP tokenizer
(486 merges -> 1000 tokens, SOT 998, EOT 999); ``num_merges=None`` keeps all 48,894 (49,408 tokens).
"""
from __future__ import annotations

import functools
import gzip
import json
import os
from pathlib import Path
from typing import Optional

CLIP_MAX_LENGTH = 77


@functools.lru_cache()
def _bytes_to_unicode() -> dict[int, str]:
    """OpenAI GPT-2/CLIP byte -> printable-unicode map."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _clip_merges(num_merges: Optional[int]) -> list[str]:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    return merges if num_merges is None else merges[:num_merges]


def write_clip_tokenizer(out_dir: str | os.PathLike, num_merges: Optional[int] = 486,
                         max_length: int = CLIP_MAX_LENGTH) -> Path:
    """Write ``vocab.json``, ``merges.txt``, ``special_tokens_map.json`` and
    ``tokenizer_config.json`` for ``transformers.CLIPTokenizer.from_pretrained(out_dir)``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merges = _clip_merges(num_merges)
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
               "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    config = dict(special, model_max_length=max_length, tokenizer_class="CLIPTokenizer",
                  do_lower_case=True, clean_up_tokenization_spaces=False)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def clip_tokenizer(out_dir: str | os.PathLike, num_merges: Optional[int] = 486, max_length: int = CLIP_MAX_LENGTH):
    """Build (if needed) and load a ``transformers.CLIPTokenizer``."""
    from transformers import CLIPTokenizer

    path = Path(out_dir)
    if not (path / "vocab.json").exists():
        write_clip_tokenizer(path, num_merges=num_merges, max_length=max_length)
    return CLIPTokenizer.from_pretrained(str(path))
