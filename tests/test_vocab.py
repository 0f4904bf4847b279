"""embtab.Vocab: ordering against an independent oracle, lookups, encoding, files."""

from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from embtab import Vocab

# Small alphabets make repeated tokens (and count ties) likely.
small_tokens = st.sampled_from(["a", "b", "c", "d", "e", "f", "Á", "the", "<x>"])
corpora = st.lists(st.lists(small_tokens, max_size=8), max_size=12)
any_tokens = st.text(min_size=0, max_size=12)  # any unicode, newlines and quotes included

SETTINGS = settings(max_examples=60, deadline=None)


def oracle_order(corpus: list[list[str]], min_freq: int, specials: tuple[str, ...]) -> list[str]:
    """The documented order, computed another way: count, then sort by (-count, first index)."""
    count: dict[str, int] = {}
    first: dict[str, int] = {}
    pos = 0
    for sent in corpus:
        for t in sent:
            count[t] = count.get(t, 0) + 1
            first.setdefault(t, pos)
            pos += 1
    kept = [t for t in count if count[t] >= min_freq and t not in specials]
    return list(specials) + sorted(kept, key=lambda t: (-count[t], first[t]))


@SETTINGS
@given(corpus=corpora, min_freq=st.integers(1, 3), extra=st.integers(0, 5))
def test_build_order_matches_oracle(corpus, min_freq, extra):
    specials = ("<pad>", "<unk>")
    expected = oracle_order(corpus, min_freq, specials)
    v = Vocab.build(corpus, min_freq=min_freq)
    assert list(v.tokens) == expected
    # Counts are the corpus counts; specials not in the corpus count 0.
    flat = [t for s in corpus for t in s]
    assert all(v.count(t) == flat.count(t) for t in v.tokens)
    # max_size keeps a prefix of the same order, specials included in the size.
    size = len(specials) + extra
    assert list(Vocab.build(corpus, min_freq=min_freq, max_size=size).tokens) == expected[:size]


def test_build_streams_a_generator_once():
    consumed = []

    def sentences():
        for line in ["a b a", "c a", "b"]:
            consumed.append(line)
            yield line.split()

    v = Vocab.build(sentences(), specials=("<unk>",), pad_token=None)
    assert consumed == ["a b a", "c a", "b"]
    assert v.tokens == ("<unk>", "a", "b", "c")
    assert v.pad_id is None and v.unk_id == 0


def test_lookups_and_unknown_tokens():
    v = Vocab.build([["x", "y", "x"]])
    assert (v.pad_id, v.unk_id) == (0, 1)
    assert v["x"] == 2 and v["never seen"] == v.unk_id
    assert "x" in v and "never seen" not in v
    assert len(v) == 4 and list(v) == ["<pad>", "<unk>", "x", "y"]
    assert v.lookup_ids(["y", "zz", "x"]) == [3, 1, 2]
    assert v.lookup_tokens(torch.tensor([[2, 3]])) == ["x", "y"]
    assert dict(v.counts) == {"<pad>": 0, "<unk>": 0, "x": 2, "y": 1}
    with pytest.raises(IndexError, match=r"id 4 at position 1 is out of range .* 0\.\.3"):
        v.lookup_tokens([0, 4])


def test_no_unk_token_raises_keyerror_naming_the_token():
    v = Vocab.build([["x"]], specials=(), unk_token=None, pad_token=None)
    with pytest.raises(KeyError, match="'zebra' is not in the vocabulary"):
        v["zebra"]
    with pytest.raises(KeyError, match="zebra"):
        v.lookup_ids(["x", "zebra"])


@SETTINGS
@given(corpus=corpora)
def test_lookup_round_trip(corpus):
    v = Vocab.build(corpus)
    tokens = [t for s in corpus for t in s]
    assert v.lookup_tokens(v.lookup_ids(tokens)) == tokens  # min_freq=1 keeps every token
    assert v.lookup_ids(v.lookup_tokens(range(len(v)))) == list(range(len(v)))


@SETTINGS
@given(corpus=corpora, batch=st.lists(st.lists(small_tokens, max_size=7), max_size=6),
       max_len=st.none() | st.integers(0, 5))
def test_encode_padded_and_flat_agree(corpus, batch, max_len):
    v = Vocab.build(corpus)
    enc = v.encode(batch, max_len=max_len)
    expected = [v.lookup_ids(s)[:max_len] if max_len is not None else v.lookup_ids(s) for s in batch]
    assert enc.lengths.tolist() == [len(r) for r in expected]
    assert enc.flat_ids.tolist() == [i for r in expected for i in r]
    starts = [sum(len(r) for r in expected[:b]) for b in range(len(expected))]
    assert enc.offsets.tolist() == starts
    width = max((len(r) for r in expected), default=0)
    assert enc.ids.shape == (len(batch), width)
    assert enc.ids.tolist() == [r + [v.pad_id] * (width - len(r)) for r in expected]
    assert enc.ids.dtype == enc.flat_ids.dtype == enc.offsets.dtype == torch.int64


def test_encode_feeds_embedding_bag_like_a_padded_sum():
    """The flat layout in an EmbeddingBag equals the padded layout summed over a zero pad row."""
    v = Vocab.build([["a", "b", "c"], ["a"]])
    batch = [["a", "b"], [], ["c", "c", "zz"]]
    enc = v.encode(batch)
    weight = torch.randn(len(v), 4)
    weight[v.pad_id] = 0
    bag = torch.nn.EmbeddingBag.from_pretrained(weight, mode="sum")
    padded = torch.nn.Embedding.from_pretrained(weight, padding_idx=v.pad_id)
    torch.testing.assert_close(bag(enc.flat_ids, enc.offsets), padded(enc.ids).sum(1))


def test_encode_errors():
    v = Vocab.build([["a"]])
    with pytest.raises(TypeError, match=r"batch\[1\] is a str"):
        v.encode([["a"], "a b"])
    with pytest.raises(TypeError, match="list of token lists"):
        v.encode("a b")
    nopad = Vocab.build([["a"]], specials=("<unk>",), pad_token=None)
    with pytest.raises(ValueError, match="no pad_token; pass padding_value"):
        nopad.encode([["a"], []])
    assert nopad.encode([["a"], []], padding_value=-1).ids.tolist() == [[1], [-1]]
    assert nopad.encode([["a"], ["zz"]]).ids.tolist() == [[1], [0]]  # equal lengths: no padding needed


def test_build_argument_errors():
    with pytest.raises(TypeError, match=r"got a str 'the cat sat' at position 0.*line.split"):
        Vocab.build(["the cat sat"])
    with pytest.raises(TypeError, match="tokens must be str, got 3"):
        Vocab.build([["a", 3]])
    with pytest.raises(ValueError, match=r"unk_token='<unk>' is not among specials=\(\)"):
        Vocab.build([["a"]], specials=())
    with pytest.raises(ValueError, match="min_freq must be an int >= 1"):
        Vocab.build([["a"]], min_freq=0)
    with pytest.raises(ValueError, match=r"max_size must be an int >= len\(specials\) = 2"):
        Vocab.build([["a"]], max_size=1)
    with pytest.raises(ValueError, match="'a' appears twice, at ids 0 and 1"):
        Vocab(["a", "a"])
    with pytest.raises(ValueError, match="unk_token '<unk>' is not among the tokens"):
        Vocab(["a"], unk_token="<unk>")


@SETTINGS
@given(tokens=st.lists(any_tokens, unique=True, max_size=20), data=st.data())
def test_save_load_round_trip(tmp_path_factory, tokens, data):
    counts = data.draw(st.lists(st.integers(0, 10**9), min_size=len(tokens), max_size=len(tokens)))
    unk = data.draw(st.none() | st.sampled_from(tokens)) if tokens else None
    v = Vocab(tokens, counts=counts, specials=[unk] if unk is not None else [], unk_token=unk)
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    v.save(path)
    w = Vocab.load(path)
    assert w == v and w.tokens == v.tokens and dict(w.counts) == dict(v.counts)
    assert w.unk_id == v.unk_id and w.specials == v.specials
    assert os.listdir(path.parent) == ["vocab.json"]  # the temp file was renamed, nothing left


def test_saved_file_is_readable_json(tmp_path):
    v = Vocab.build([["héllo", "world", "héllo"]])
    path = tmp_path / "v.json"
    v.save(path)
    text = path.read_text(encoding="utf-8")
    assert "héllo" in text  # not \u-escaped: readable
    doc = json.loads(text)
    assert doc["format"] == "embtab.vocab" and doc["format_version"] == 1
    assert doc["tokens"] == ["<pad>", "<unk>", "héllo", "world"] and doc["counts"] == [0, 0, 2, 1]
    v2 = Vocab.build([["other"]])
    v2.save(path)  # overwrites atomically
    assert Vocab.load(path) == v2


def test_load_rejects_corrupt_and_foreign_files(tmp_path):
    v = Vocab.build([["a", "b"]])
    good = tmp_path / "good.json"
    v.save(good)
    text = good.read_text()

    truncated = tmp_path / "truncated.json"
    truncated.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"truncated\.json.*invalid JSON at line \d+, column \d+"):
        Vocab.load(truncated)

    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"itos": ["a"]}))
    with pytest.raises(ValueError, match=r"not an embtab vocabulary file.*\['itos'\].*Vocab.save"):
        Vocab.load(foreign)

    newer = tmp_path / "newer.json"
    newer.write_text(text.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(ValueError, match="format_version 99.*upgrade embtab"):
        Vocab.load(newer)

    dup = tmp_path / "dup.json"
    doc = json.loads(text)
    doc["tokens"][3] = doc["tokens"][2]
    dup.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="corrupt.*appears twice"):
        Vocab.load(dup)

    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ValueError, match="not UTF-8"):
        Vocab.load(binary)
