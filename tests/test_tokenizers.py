"""Offline tokenizers: the CLIP BPE rebuilt from open_clip's merges, and the T5 Unigram made in code."""
import pytest
import torch

from steer.tokenizers import clip_tokenizer
from tests.fixtures.tiny._t5 import T5_VOCAB_SIZE, t5_tokenizer

SENTENCES = ["a red circle above a blue square", "A photo of an astronaut riding a horse!",
             "two   small green triangles, 3 stars"]


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    return t5_tokenizer(tmp_path_factory.mktemp("t5"))


def test_clip_tiny_vocabulary(tmp_path):
    tok = clip_tokenizer(tmp_path)
    assert len(tok) == 1000
    assert tok.bos_token_id == 998 and tok.eos_token_id == 999
    ids = tok(SENTENCES[0], padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[0] == 998 and 999 in ids


def test_clip_full_vocabulary_matches_open_clip(tmp_path):
    import open_clip

    tok = clip_tokenizer(tmp_path, num_merges=None)
    assert len(tok) == 49408
    reference = open_clip.get_tokenizer("ViT-B-32")
    ours = tok(SENTENCES, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    theirs = reference(SENTENCES)  # (3, 77), zero-padded after EOT
    for o, t in zip(ours, theirs):
        n = int((t != 0).sum())
        assert torch.equal(o[:n], t[:n])


def test_t5_special_ids_and_eos(t5):
    assert len(t5) == T5_VOCAB_SIZE
    assert (t5.pad_token_id, t5.eos_token_id, t5.unk_token_id) == (0, 1, 2)
    assert type(t5).__name__ in ("T5TokenizerFast", "T5Tokenizer")
    ids = t5("a red circle").input_ids
    assert ids[-1] == 1 and ids.count(1) == 1
    assert t5.convert_ids_to_tokens(ids[:-1]) == ["▁a", "▁red", "▁circle"]


def test_t5_unigram_segmentation_round_trips(t5):
    enc = t5(SENTENCES).input_ids
    assert all(2 not in ids for ids in enc)  # ASCII is always covered by the single characters
    decoded = t5.batch_decode(enc, skip_special_tokens=True)
    assert decoded == [" ".join(s.split()) for s in SENTENCES]
    assert t5.convert_ids_to_tokens(t5("xyzzy").input_ids)[0] == "▁x"  # unknown words are spelled out
    assert t5("ü").input_ids[-2] == 2  # characters outside the vocabulary are <unk>


@pytest.mark.parametrize("max_length", [77, 120, 256, 300])
def test_t5_padding_and_truncation_as_pipelines_call_it(t5, max_length):
    long = " ".join(["red circle"] * 200)
    enc = t5([SENTENCES[0], long], padding="max_length", max_length=max_length, truncation=True,
             add_special_tokens=True, return_tensors="pt")
    assert enc.input_ids.shape == (2, max_length) and enc.attention_mask.shape == (2, max_length)
    n = len(t5(SENTENCES[0]).input_ids)
    assert enc.attention_mask[0].sum() == n and (enc.input_ids[0, n:] == 0).all()
    assert enc.attention_mask[1].all() and enc.input_ids[1, -1] == 1  # truncated, still ends in </s>
    longest = t5([SENTENCES[0], long], padding="longest", return_tensors="pt").input_ids
    assert longest.shape[1] > max_length


def test_t5_vocab_size_option(tmp_path):
    tok = t5_tokenizer(tmp_path / "a", vocab_size=600)
    assert len(tok) == 600
    with pytest.raises(ValueError, match="vocab_size must be >="):
        t5_tokenizer(tmp_path / "b", vocab_size=50)


def test_t5_drives_a_t5_encoder(t5):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    enc = T5EncoderModel(T5Config(vocab_size=len(t5), d_model=16, d_ff=32, d_kv=4, num_heads=2, num_layers=1)).eval()
    batch = t5(SENTENCES, padding="max_length", max_length=32, truncation=True, return_tensors="pt")
    out = enc(batch.input_ids, attention_mask=batch.attention_mask)[0]
    assert out.shape == (3, 32, 16) and torch.isfinite(out).all()
