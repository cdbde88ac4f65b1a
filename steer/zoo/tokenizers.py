"""Tokenizers built offline (no hub): a real CLIP BPE tokenizer and a T5-style Unigram tokenizer.

CLIP: open_clip ships OpenAI's ``bpe_simple_vocab_16e6.txt.gz``. The vocabulary is the 256 byte
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


# ---- T5 (SentencePiece Unigram) ---------------------------------------------------------------
T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in google-t5's spiece.model
_T5_WORDS = (
    "a an the of and in on at to with without above below under over left right next near far behind "
    "front middle center top bottom corner inside outside between beside is are was be it this that "
    "there here one two three four five six seven eight nine ten many some no not very small large big "
    "tiny huge tall short long wide thin thick bright dark light red green blue yellow orange purple "
    "pink brown black white gray grey cyan magenta gold silver circle square triangle star heart cross "
    "ring rectangle ellipse line dot shape shapes color colors colored background image photo picture "
    "painting drawing sketch render style art of a cat dog bird horse car tree house sky sun moon water "
    "city street forest mountain river beach flower person man woman child face portrait landscape "
    "highly detailed realistic digital oil watercolor cinematic lighting sharp focus beautiful cute "
    "old new happy sad running sitting standing flying"
).split()


def _t5_pieces(vocab_size: Optional[int]) -> list[tuple[str, float]]:
    """Unigram pieces with log-prob scores: specials, ``▁``, single characters (bare and
    word-initial), common words (word-initial), then two-letter pieces up to ``vocab_size``.

    Scores make whole words beat their spelling and word-initial pieces beat a bare ``▁``.
    """
    chars = [chr(c) for c in range(33, 127)]  # printable ASCII without space
    words = list(dict.fromkeys(_T5_WORDS))
    pieces = [(s, 0.0) for s in T5_SPECIALS] + [("▁", -3.0)]
    pieces += [("▁" + c, -8.0) for c in chars] + [(c, -9.0) for c in chars]
    pieces += [("▁" + w, -4.0 - 0.01 * i) for i, w in enumerate(words)]
    base = len(pieces)
    if vocab_size is None:
        return pieces
    if vocab_size < 4 + 2 * len(chars):
        raise ValueError(f"vocab_size must be >= {4 + 2 * len(chars)} (specials and single characters), "
                         f"got {vocab_size}")
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    pairs = [a + b for a in letters for b in letters]
    extra = [(p, -7.0 - 0.001 * i) for i, p in enumerate(pairs)]
    pieces = (pieces + extra)[:vocab_size]
    if len(pieces) < vocab_size:
        raise ValueError(f"vocab_size must be <= {base + len(extra)}, got {vocab_size}")
    return pieces


def write_t5_tokenizer(out_dir: str | os.PathLike, vocab_size: Optional[int] = None,
                       model_max_length: int = 512) -> Path:
    """Write ``tokenizer.json`` (a ``tokenizers`` Unigram model, SentencePiece-style: Metaspace
    pre-tokenizer, ``</s>`` appended by the post-processor, ``<pad>`` 0 / ``</s>`` 1 / ``<unk>`` 2),
    ``special_tokens_map.json`` and ``tokenizer_config.json`` for
    ``transformers.T5TokenizerFast.from_pretrained(out_dir)``. No sentinel ``<extra_id_*>`` tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.Unigram(_t5_pieces(vocab_size), unk_id=2, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=["$A", "</s>"], pair=["$A", "</s>", "$B", "</s>"], special_tokens=[("</s>", 1)])
    tok.save(str(out / "tokenizer.json"))
    special = {"eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    (out / "special_tokens_map.json").write_text(json.dumps(special))
    config = dict(special, model_max_length=model_max_length, tokenizer_class="T5Tokenizer", extra_ids=0,
                  additional_special_tokens=[], clean_up_tokenization_spaces=False)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


def t5_tokenizer(out_dir: str | os.PathLike, vocab_size: Optional[int] = None, model_max_length: int = 512):
    """Build (if needed) and load a ``transformers.T5TokenizerFast``. ``len(tokenizer)`` is the
    vocabulary size a ``T5EncoderModel`` config needs (``T5_VOCAB_SIZE`` with the default)."""
    from transformers import T5TokenizerFast

    path = Path(out_dir)
    if not (path / "tokenizer.json").exists():
        write_t5_tokenizer(path, vocab_size=vocab_size, model_max_length=model_max_length)
    return T5TokenizerFast.from_pretrained(str(path))


T5_VOCAB_SIZE = len(_t5_pieces(None))
