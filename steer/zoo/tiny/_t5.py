"""The tiny T5 text encoder shared by the SD3, FLUX and PixArt fixtures (offline Unigram tokenizer)."""
from __future__ import annotations

import tempfile


def tiny_t5_tokenizer():
    """The offline T5 Unigram tokenizer (see ``steer.zoo.tokenizers.t5_tokenizer``), loaded into memory."""
    from steer.zoo.tokenizers import t5_tokenizer

    with tempfile.TemporaryDirectory(prefix="steer-t5-tok-") as d:
        return t5_tokenizer(d)


def tiny_t5_encoder(d_model: int = 32):
    """A 2-layer ``T5EncoderModel`` (random init; call inside ``seeded``) matching the tokenizer."""
    from transformers import T5Config, T5EncoderModel

    from steer.zoo.tokenizers import T5_VOCAB_SIZE

    config = T5Config(vocab_size=T5_VOCAB_SIZE, d_model=d_model, d_ff=2 * d_model, d_kv=8,
                      num_heads=d_model // 8, num_layers=2, relative_attention_num_buckets=8,
                      dropout_rate=0.0, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return T5EncoderModel(config)
