"""The tokenizer against OpenAI's ``clip/simple_tokenizer.py`` and ``clip.tokenize``.

Exactness is checked on a deterministic hostile corpus (captions, many scripts, emoji, control
characters, HTML entities, odd whitespace, mojibake, special-token strings, long strings), and
each shortcut of the fast path is checked on its own: skipping ftfy (fuzzed against ftfy and
checked against each of its character-wise fixers), the mojibake prefilter (checked against
the structure of ftfy's badness regex), the ASCII pre-tokenizer, and the three BPE algorithms
(backtracking, vectorised, heap) against OpenAI's loop.
"""

from __future__ import annotations

import gzip
import importlib.util
import random
import unicodedata
from array import array

import ftfy
import ftfy.badness
import ftfy.fixes
import numpy as np
import pytest
import torch

import refs
from cliplab.tokenizer import ContextLengthError, Tokenizer, decode, tokenize
from cliplab.tokenizer import fast as tk

SOT, EOT = 49406, 49407


# --- references and the corpus ---------------------------------------------------------------


@pytest.fixture(scope="module")
def ref():
    """OpenAI's SimpleTokenizer."""
    return refs.openai_tokenizer_module().SimpleTokenizer()


@pytest.fixture(scope="module")
def clip_tokenize():
    """OpenAI's ``clip.tokenize`` (its module-level tokenizer)."""
    return refs.openai_clip().tokenize


@pytest.fixture(scope="module")
def ours() -> Tokenizer:
    return Tokenizer()


def _openai_clean(ref_module, text: str) -> str:
    return ref_module.whitespace_clean(ref_module.basic_clean(text)).lower()


# fmt: off
WORDS = ["a", "photo", "of", "the", "dog", "cat", "on", "beach", "with", "red", "car", "in",
    "city", "at", "night", "two", "people", "walking", "street", "sunset", "mountain", "lake",
    "house", "garden", "woman", "man", "child", "playing", "football", "vintage", "poster",
    "black", "white", "close", "up", "view", "from", "above", "interior", "design", "kitchen",
    "modern", "living", "room", "wedding", "dress", "shoes", "men's", "women's", "isn't",
    "don't", "we're", "they've", "i'm", "you'll", "she'd"]
# fmt: on
MULTILINGUAL = [
    "Une femme marche sur la plage, été 2019",
    "Schöne Aussicht über die Alpen — Größe XL",
    "Niños jugando al fútbol en el parque",
    "São Paulo à noite",
    "Кошка спит на диване",
    "Η Ακρόπολη της Αθήνας",
    "一只猫坐在窗台上",
    "東京タワーと夜景、かわいい柴犬",
    "서울 남산타워 야경",
    "غروب الشمس على شاطئ البحر",
    "ताजमहल का सुंदर दृश्य",
    "วัดพระแก้วกรุงเทพ",
    "Phở bò Hà Nội truyền thống",
    "İstanbul Boğazı'nda gün batımı",
    "Zürich, Kraków, Łódź, Ærøskøbing, Þórshöfn",
    "e\u0301 n\u0303 a\u0308 ฟ้\u0e49 क़\u093c",  # combining marks
]
EMOJI = [
    "😀",
    "👍🏽",
    "👨\u200d👩\u200d👧\u200d👦",
    "🏳\ufe0f\u200d🌈",
    "🇫🇷🇯🇵",
    "❤\ufe0f",
    "☕\ufe0e",
    "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f",
    "1\ufe0f\u20e3",
]
ENTITIES = [
    "&amp;",
    "&amp;amp;",
    "&#x27;",
    "&lt;b&gt;bold&lt;/b&gt;",
    "&quot;",
    "&nbsp;",
    "&#8217;",
    "&eacute;",
    "&notit;",
    "&copy",
    "&#0;",
    "&#xD800;",
    "& ",
    "&",
    "AT&T",
    "<b>&amp;</b>",
]
WHITESPACE = [
    " ",
    "\t",
    "\n",
    "\r\n",
    "\r",
    "\x0b",
    "\x0c",
    "\u00a0",
    "\u2028",
    "\u2029",
    "\u3000",
    "\u200b",
    "\u2009",
    "\x85",
    "\x1c",
    "\ufeff",
]
MOJIBAKE = [
    "Ã©",
    "cafÃ©",
    "â€™",
    "â€œquotedâ€\x9d",
    "Ã¼ber",
    "ÐŸÑ€Ð¸Ð²ÐµÑ‚",
    "Ã\xa0 la",
    "Â£5",
    "Ã ",
    "вЂ™",
    "Ã¢â‚¬â„¢",
    "×²",
    "√≤",
]
SPECIAL = [
    "<|startoftext|>",
    "<|endoftext|>",
    "<|ENDOFTEXT|>",
    "<|ſtartoftext|>",
    "a<|endoftext|>b",
    "<<|startoftext|>>",
    "<|endoftext|",
    "</w>",
    "x</w>y",
]
PUNCT = ["...", "!!!", "?!", "--", "—", "–", "…", "(", ")", "[]", "{}", "#", "@", "$", "%", "^^"]
QUOTES = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "’s", "‘", "’", "“", "”", "ʼ", "'", '"', "`"]
CONTROLS = [chr(c) for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))]
ODD = [
    "ﬁ",
    "ﬂ",
    "Ǆ",
    "ĳ",
    "ŉ",
    "Ｈｅｌｌｏ",
    "１２３",
    "ｶﾀｶﾅ",
    "\x1b[31mred\x1b[0m",
    "\ud83d\ude00",  # a surrogate pair in a str
    "\ud800",  # a lone surrogate
    "\u0130stanbul",
    "ǅ",
    "Ω",
    "K",
    "ﬀ",
    "ß",
    "ΣΑΣ",
]


def _random_codepoint(rng: random.Random) -> str:
    """Any code point but surrogates, biased towards the busy parts of Unicode."""
    ranges = [(0x20, 0x7E), (0x80, 0x24F), (0x370, 0x52F), (0x590, 0x6FF), (0x900, 0xDFF)]
    ranges += [(0x2000, 0x2BFF), (0x3000, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3)]
    ranges += [(0xFB00, 0xFFFD), (0x1F300, 0x1FAFF), (0x10000, 0x10FFFF)]
    lo, hi = rng.choice(ranges)
    return chr(rng.randint(lo, hi))


def build_corpus(seed: int = 0, n: int = 6000) -> list[str]:
    """A deterministic hostile corpus of about ``n`` texts (see the module docstring)."""
    rng = random.Random(seed)
    pools = [
        WORDS,
        MULTILINGUAL,
        EMOJI,
        ENTITIES,
        WHITESPACE,
        MOJIBAKE,
        SPECIAL,
        PUNCT,
        QUOTES,
        CONTROLS,
        ODD,
    ]
    corpus = [
        "",
        " ",
        "a",
        "A photo of a dog.",
        "Hello, World!",
        "It's 5 o'clock & I'm late",
        "Women’s “best” running shoes — size 10",
    ]
    corpus += MULTILINGUAL + EMOJI + ENTITIES + WHITESPACE + MOJIBAKE + SPECIAL + ODD + CONTROLS
    while len(corpus) < n - 12:
        kind = rng.random()
        if kind < 0.35:  # caption-like: mostly words, a few odd things mixed in
            parts = []
            for _ in range(rng.randint(1, 25)):
                roll = rng.random()
                if roll < 0.7:
                    word = rng.choice(WORDS)
                    parts.append(word.capitalize() if rng.random() < 0.2 else word)
                elif roll < 0.8:
                    parts.append(str(rng.randint(0, 10 ** rng.randint(1, 6))))
                else:
                    parts.append(rng.choice(rng.choice(pools)))
            sep = rng.choice([" ", " ", " ", "", "  ", "\t", ", "])
            corpus.append(sep.join(parts) + rng.choice(["", ".", "!", " ", "\n"]))
        elif kind < 0.6:  # a soup of the hostile pools
            corpus.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 12))))
        elif kind < 0.8:  # random code points (no surrogates), some joined by spaces
            chars = [_random_codepoint(rng) for _ in range(rng.randint(1, 30))]
            if rng.random() < 0.5:
                chars = [c + (" " if rng.random() < 0.3 else "") for c in chars]
            corpus.append("".join(chars))
        elif kind < 0.9:  # random printable ASCII with the characters ftfy cares about
            alphabet = "abcXYZ019 &;#<>'\"\t\n\r.,!?-_/\\"
            corpus.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))))
        else:  # made-up long words: BPE off the beaten path
            letters = rng.choice(["abcdefghijklmnopqrstuvwxyz", "aeiou", "ab", "éèêàçñøå", "йцук"])
            corpus.append("".join(rng.choice(letters) for _ in range(rng.randint(10, 80))))
    # A few long texts (OpenAI's BPE is quadratic per word: keep its words short here).
    corpus.append(" ".join(rng.choice(WORDS) for _ in range(2500)))  # ~12k characters
    soup = (rng.choice(rng.choice(pools)) + rng.choice(["", "", " "]) for _ in range(3000))
    corpus.append("".join(soup))
    runs = ("".join(_random_codepoint(rng) for _ in range(rng.randint(1, 20))) for _ in range(1200))
    corpus.append(" ".join(runs))  # ~12k characters
    corpus.append(("Ã©tÃ© " * 2500) + "&amp; " * 500)
    corpus.append("x" * 600)
    corpus.append("ab" * 400 + " " + "a" * 777)
    corpus.append("\n".join(MULTILINGUAL * 60))
    corpus.append("photo,of.the:dog;" * 800)
    corpus.append("1234567890" * 1500)
    corpus.append(" ".join(["<|endoftext|>"] * 50))
    corpus.append("\u3000".join(EMOJI * 100))
    corpus.append("&lt;" * 400 + " &amp;lt;" * 400)
    return corpus


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return build_corpus()


@pytest.fixture(scope="module")
def expected_ids(ref, corpus) -> list[list[int]]:
    """OpenAI's ids for the corpus (computed once: OpenAI's encode is the slow part)."""
    return [ref.encode(text) for text in corpus]


def _rows(ids: list[list[int]], context_length: int = 77) -> torch.Tensor:
    """``clip.tokenize``'s rows from OpenAI's ids, truncating (its code, restated)."""
    result = torch.zeros(len(ids), context_length, dtype=torch.long)
    for i, row in enumerate(ids):
        tokens = [SOT, *row, EOT][:context_length]
        tokens[-1] = EOT
        result[i, : len(tokens)] = torch.tensor(tokens)
    return result


# --- exactness ---------------------------------------------------------------------------------


def test_vocabulary_matches_openai(ours, ref):
    assert ours.vocab_size == len(ref.encoder) == 49408
    assert (ours.sot_token_id, ours.eot_token_id) == (SOT, EOT)
    assert ours.encoder == ref.encoder
    assert ours.decoder == ref.decoder
    assert ours._proper  # the fast BPE paths are on for OpenAI's vocabulary


def test_corpus_is_large_and_hostile(corpus):
    assert len(corpus) >= 5000
    assert sum(len(t) > 10_000 for t in corpus) >= 5
    assert any("<|endoftext|>" in t for t in corpus)
    assert any(not t.isascii() for t in corpus)


def test_encode_matches_openai(ours, corpus, expected_ids):
    mismatches = [t for t, ids in zip(corpus, expected_ids) if ours.encode(t) != ids]
    assert not mismatches, f"{len(mismatches)} texts differ, e.g. {mismatches[:3]!r}"


def test_batch_matches_openai_clip_tokenize(clip_tokenize, corpus, expected_ids):
    # A fresh instance on the whole corpus: cold cache, the vectorised BPE of many misses.
    expected = _rows(expected_ids)
    got = Tokenizer()(corpus, truncate=True)
    assert got.dtype == torch.long and got.shape == (len(corpus), 77)
    assert torch.equal(got, expected)
    # Small batches (the per-word backtracking BPE).
    small = Tokenizer()
    rows = [small(corpus[i : i + 7], truncate=True) for i in range(0, 2100, 7)]
    assert torch.equal(torch.cat(rows), expected[:2100])
    # clip.tokenize itself against the module-level function, on part of the corpus.
    subset = corpus[::5] + corpus[-12:]
    assert torch.equal(tokenize(subset, truncate=True), clip_tokenize(subset, truncate=True))


@pytest.mark.parametrize("context_length", [2, 5, 77, 200])
def test_context_lengths_and_truncation_match_openai(
    clip_tokenize, corpus, expected_ids, context_length
):
    got = tokenize(corpus, context_length=context_length, truncate=True)
    assert torch.equal(got, _rows(expected_ids, context_length))
    texts = corpus[:100] + corpus[-3:]
    expected = clip_tokenize(texts, context_length=context_length, truncate=True)
    assert torch.equal(tokenize(texts, context_length=context_length, truncate=True), expected)
    assert (got[:, -1][got[:, -1] != 0] == EOT).all()  # cut rows end in EOT


def test_rows_are_sot_ids_eot_padding(ours, ref):
    out = ours(["a photo of a cat", "", "<|endoftext|>"], context_length=10)
    ids = ref.encode("a photo of a cat")
    assert out[0].tolist() == [SOT, *ids, EOT] + [0] * (8 - len(ids))
    assert out[1].tolist() == [SOT, EOT] + [0] * 8
    assert out[2].tolist() == [SOT, EOT, EOT] + [0] * 7  # the literal string is the special id
    assert ours("one text").shape == (1, 77)


def test_decode_matches_openai(ours, ref, expected_ids):
    for ids in expected_ids:
        if SOT not in ids and EOT not in ids:  # ours drops those (OpenAI spells them out)
            assert ours.decode(ids) == ref.decode(ids)
    # a row of the tensor decodes to the text (SOT, EOT and padding dropped)
    for text in ["a photo of a dog", "Straße ☕ 东京", "it's 5 o'clock", ""]:
        row = ours([text])[0]
        assert ours.decode(row) == decode(row) == ref.decode(ref.encode(text))
        assert ours.decode(row.numpy()) == ours.decode(row.tolist())
    # invalid UTF-8 across ids becomes U+FFFD, as in OpenAI
    half = ours.encode("𓀀")[:2]
    assert ours.decode(half) == ref.decode(half) and "\ufffd" in ours.decode(half)


def test_decode_bad_input(ours):
    with pytest.raises(ValueError, match="1-D"):
        ours.decode(torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="49408"):
        ours.decode([1, 49408])
    with pytest.raises(ValueError, match="-1"):
        ours.decode([-1])
    assert ours.decode([]) == ""
    assert ours.decode([SOT, 320, EOT, 0, 0]) == ours.decode([320])
    assert ours.decode([0, 0]) == "!!"  # id 0 is "!", padding only after an EOT


# --- bad input and edge cases ------------------------------------------------------------------


def test_too_long_raises_value_error_naming_the_text():
    long_text = "a photo of a very long caption " * 20
    with pytest.raises(ValueError) as info:
        tokenize(["short", long_text])
    message = str(info.value)
    assert "text 1" in message and "a photo of a very long" in message
    assert "(620 chars)" in message  # shortened: the length of the text is given instead
    assert "142 tokens" in message and "context length 77" in message
    assert isinstance(info.value, ContextLengthError)
    assert isinstance(info.value, RuntimeError)  # what clip.tokenize raises
    assert len(message) < 300
    assert tokenize(long_text, truncate=True).shape == (1, 77)


def test_type_errors_name_the_index_and_type():
    with pytest.raises(TypeError, match=r"texts\[2\] must be str, not int"):
        tokenize(["a", "b", 3])
    with pytest.raises(TypeError, match=r"texts\[0\] must be str, not bytes"):
        tokenize([b"bytes"])
    with pytest.raises(TypeError, match="not NoneType"):
        tokenize(None)
    with pytest.raises(TypeError):
        Tokenizer().encode(b"bytes")
    with pytest.raises(TypeError, match="context_length"):
        tokenize("a", context_length=7.0)


def test_context_length_must_fit_sot_and_eot():
    for bad in (1, 0, -5):
        with pytest.raises(ValueError, match="at least 2"):
            tokenize("a", context_length=bad)
    assert tokenize("", context_length=2).tolist() == [[SOT, EOT]]


def test_empty_inputs():
    assert tokenize([]).shape == (0, 77) and tokenize([]).dtype == torch.long
    assert tokenize([], context_length=5).shape == (0, 5)
    assert tokenize("").tolist() == [[SOT, EOT] + [0] * 75]
    assert tokenize(("a", "b")).shape == (2, 77)  # any sequence, or iterable
    assert tokenize(t for t in ["a", "b", "c"]).shape == (3, 77)


def test_hostile_long_inputs_are_fast_and_exact_enough(ours):
    rng = random.Random(1)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(100_000))
    ids = ours.encode(word)  # heap BPE; OpenAI's loop would take hours here
    assert ours.decode(ids) == word + " "
    assert ids == ours._bpe_backtrack(word + "\x00")  # a second algorithm agrees
    junk = "".join(rng.choice("abc ,.é東😀") for _ in range(100_000))
    megabyte = " ".join(rng.choice(WORDS) for _ in range(160_000)) + junk
    assert len(megabyte) > 1_000_000
    out = ours([megabyte, word], truncate=True)
    assert out.shape == (2, 77) and out[0, 76] == EOT and out[1, 76] == EOT
    with pytest.raises(ValueError, match=f"{len(megabyte)} chars"):
        ours(megabyte)
    assert tk._MAX_CACHED_LEN < 1000 and max(map(len, ours._cache)) <= tk._MAX_CACHED_LEN


def test_default_tokenizer_is_created_lazily():
    """Importing the module builds no tokenizer; the first call does, once."""
    spec = importlib.util.spec_from_file_location("_fresh_tokenizer", tk.__file__)
    fresh = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fresh)
    assert fresh._default_tokenizer is None
    assert fresh.tokenize("a").shape == (1, 77)
    first = fresh._default_tokenizer
    assert isinstance(first, fresh.Tokenizer)
    fresh.decode([320])
    assert fresh.default_tokenizer() is first


def test_custom_bpe_path_and_improper_vocabulary(tmp_path, ref, corpus):
    """A vocabulary file given by path, and one the fast BPE paths refuse (heap BPE)."""
    src = tk.default_bpe_path()
    path = tmp_path / "same.txt.gz"
    path.write_bytes(src.read_bytes())
    assert Tokenizer(path).encode("a photo of a dog") == ref.encode("a photo of a dog")

    lines = gzip.decompress(src.read_bytes()).decode("utf-8").split("\n")
    # Move merge 1000 to the end: its token is then created after tokens made from it.
    lines = lines[:1001] + lines[1002 : 49152 - 256 - 1] + [lines[1001]]
    improper = tmp_path / "improper.txt.gz"
    improper.write_bytes(gzip.compress("\n".join(lines).encode("utf-8")))
    ours_improper = Tokenizer(improper)
    assert not ours_improper._proper
    ref_improper = refs.openai_tokenizer_module().SimpleTokenizer(str(improper))
    for text in corpus[:300] + corpus[-12:-6]:
        assert ours_improper.encode(text) == ref_improper.encode(text)


# --- the shortcuts, one by one -----------------------------------------------------------------


def test_ascii_fast_path_fuzzed_against_openai_cleaning(ref):
    """ASCII text: ftfy and html.unescape are skipped unless controls or entities appear."""
    module = refs.openai_tokenizer_module()
    rng = random.Random(2)
    alphabets = [
        "".join(map(chr, range(128))),
        "ab &;#x27 amp lt \t\n\r\x0b\x0c<>",
        "aA1 '.,!?-\t\n\r",
        "&amp;&lt;&#39;&#x41;&quot; notin",
    ]
    fast = 0
    for _ in range(10_000):
        text = "".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(0, 30)))
        assert tk._clean(text) == _openai_clean(module, text), repr(text)
        if "&" not in text and tk._ASCII_TOUCHED.search(text) is None:
            fast += 1
            if "\r" not in text:  # the claim itself: ftfy returns such text unchanged
                assert ftfy.fix_text(text) == text, repr(text)
    assert fast > 2500


def test_unicode_fast_path_fuzzed_against_openai_cleaning():
    """(The corpus tests cover the same through the ids.)"""
    module = refs.openai_tokenizer_module()
    rng = random.Random(3)
    pools = [MULTILINGUAL, EMOJI, MOJIBAKE, QUOTES, PUNCT, WORDS, ODD, WHITESPACE, ENTITIES]
    latin1 = [chr(c) for c in range(0xA0, 0x250)]
    texts = []
    for _ in range(8000):
        roll = rng.random()
        if roll < 0.4:
            texts.append(" ".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 6))))
        elif roll < 0.7:  # mojibake-prone neighbourhoods: Latin-1, punctuation, Cyrillic
            chars = latin1 + list("€™œ“”‘’–—•…ВГРСЂβΒΓΞΟāabc ") + CONTROLS[:4]
            texts.append("".join(rng.choice(chars) for _ in range(rng.randint(1, 12))))
        else:
            texts.append("".join(_random_codepoint(rng) for _ in range(rng.randint(1, 15))))
    for text in texts:
        assert tk._clean(text) == _openai_clean(module, text), repr(text)


needs_ftfy_63 = pytest.mark.skipif(
    not tk._FTFY_FAST_NONASCII, reason="the non-ASCII fast path is only on for ftfy 6.3"
)


@needs_ftfy_63
def test_characters_outside_the_touched_set_are_left_alone_by_each_ftfy_fixer():
    """Every code point not in _FTFY_TOUCHED or _QUOTES survives each character-wise fixer."""
    inert = "".join(
        chr(c)
        for c in range(0x110000)
        if not 0xD800 <= c <= 0xDFFF
        and tk._FTFY_TOUCHED.match(chr(c)) is None
        and tk._QUOTES.match(chr(c)) is None
    )
    assert len(inert) > 1_000_000
    fixers = [
        ftfy.fixes.fix_c1_controls,
        ftfy.fixes.fix_latin_ligatures,
        ftfy.fixes.fix_character_width,
        ftfy.fixes.uncurl_quotes,
        ftfy.fixes.fix_line_breaks,
        ftfy.fixes.fix_surrogates,
        ftfy.fixes.remove_terminal_escapes,
        ftfy.fixes.remove_control_chars,
    ]
    for fixer in fixers:
        assert fixer(inert) == inert, fixer.__name__
    # and these are all the fixers fix_text runs besides HTML, encoding and NFC
    config_fields = set(ftfy.TextFixerConfig._fields)
    handled = {f.__name__ for f in fixers} | {"unescape_html", "fix_encoding", "normalization"}
    handled |= {"restore_byte_a0", "replace_lossy_sequences", "decode_inconsistent_utf8"}
    handled |= {"max_decode_length", "explain"}
    assert config_fields <= handled, config_fields - handled


def _parse(pattern: str, flags: int):
    try:
        from re import _parser as sre_parse  # Python >= 3.11
    except ImportError:  # pragma: no cover
        import sre_parse
    return sre_parse, sre_parse.parse(pattern, flags)


@needs_ftfy_63
def test_mojibake_prefilter_covers_every_badness_alternative():
    """Each alternative of ftfy's BADNESS_RE needs a marker character; none is too long."""
    pattern = ftfy.badness.BADNESS_RE
    sre_parse, tree = _parse(pattern.pattern, pattern.flags)
    constants = sre_parse  # opcodes live in the parser module's namespace
    assert tree.getwidth()[1] <= tk._MOJIBAKE_WIDTH
    ((op, (_, branches)),) = tree.data
    assert op == constants.BRANCH

    def chars(item) -> set[str] | None:
        """The characters an item can match, if it is a plain literal or class."""
        op, arg = item
        if op == constants.LITERAL:
            return {chr(arg)}
        if op == constants.IN:
            out: set[str] = set()
            for sub_op, sub_arg in arg:
                if sub_op == constants.LITERAL:
                    out.add(chr(sub_arg))
                elif sub_op == constants.RANGE:
                    out.update(map(chr, range(sub_arg[0], sub_arg[1] + 1)))
                else:  # negation or a category (\s, \w): not a plain class
                    return None
            return out
        return None

    for branch in branches:
        classes = [chars(item) for item in branch.data]
        assert any(
            c is not None and all(tk._MOJIBAKE_MARKERS.match(ch) for ch in c) for c in classes
        ), branch


@needs_ftfy_63
def test_mojibake_prefilter_agrees_with_is_bad():
    rng = random.Random(4)
    markers = "".join(chr(c) for c in range(0x80, 0x2600) if tk._MOJIBAKE_MARKERS.match(chr(c)))
    pool = markers + "abcXYZ \n.,!?'" + "éàüñçøœßðþ" + "ВГРСЂвβΒΓΞΟā€" + "東😀"
    for _ in range(30_000):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(1, 40)))
        assert tk._is_bad(text) == ftfy.badness.is_bad(text), repr(text)
    many = "é€" * 100 + "Ã " + "x" * 50
    assert tk._is_bad(many) == ftfy.badness.is_bad(many)


def test_ascii_pretokenizer_matches_openai_pattern():
    rng = random.Random(5)
    alphabet = "".join(map(chr, range(128))) + "<|startoftext|><|endoftext|>'sStTrReVvMmLlDd"
    for _ in range(50_000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 25)))
        assert tk._PAT_ASCII.findall(text) == tk._PAT.findall(text), repr(text)


def _openai_bpe(ref, symbols: str) -> list[int]:
    """OpenAI's BPE loop on a word given as our symbol string (without the "</w>" mark)."""
    return [ref.encoder[t] for t in ref.bpe(symbols[:-1]).split(" ")]


def test_bpe_algorithms_agree_with_openai(ours, ref):
    """Backtracking, vectorised and heap BPE against OpenAI's loop, words chosen to be hard."""
    rng = random.Random(6)
    words = [s for s in ours._symbol_tokens if len(s) > 1]  # every token as a word
    words = [w if w.endswith("\x00") else w + "\x00" for w in words if not w.startswith("\x00")]
    alphabets = ["abcdefghijklmnopqrstuvwxyz", "aeiourstln", "ab", "a", "xyzq"]
    random_words = [
        "".join(rng.choice(rng.choice(alphabets)) for _ in range(rng.randint(2, 30))) + "\x00"
        for _ in range(10_000)
    ]
    to_symbols = ours._byte_to_symbol
    unicode_words = []
    for _ in range(3000):
        piece = "".join(_random_codepoint(rng) for _ in range(rng.randint(1, 6)))
        symbols = piece.encode("utf-8", "surrogatepass").decode("latin-1").translate(to_symbols)
        unicode_words.append(symbols + "\x00")
    everything = words + random_words + unicode_words

    def initial(symbols: str) -> list[int]:
        get = ours._symbol_tokens.__getitem__
        return [get(c) for c in symbols[:-2]] + [get(symbols[-2:])]

    batch = ours._bpe_batch(everything)
    for symbols, packed in zip(everything, batch):
        expected = ours._bpe_heap(initial(symbols))
        assert ours._bpe_backtrack(symbols) == expected, repr(symbols)
        assert array("i", packed).tolist() == expected, repr(symbols)
    for symbols in rng.sample(everything, 2000):  # OpenAI's loop is the slow one
        assert ours._bpe_heap(initial(symbols)) == _openai_bpe(ref, symbols), repr(symbols)
    # Very long words: the heap path against OpenAI (quadratic there, so not too long).
    for length in (300, 1000):
        word = "".join(rng.choice("abcdefghij") for _ in range(length))
        assert ours.encode(word) == ref.encode(word)


def test_every_token_is_reachable():
    """Recompute what the vocabulary digest shortcut assumes: BPE can produce every token."""
    t = Tokenizer()
    for merged in range(tk._N_BASE, t.vocab_size - 2):
        a, b = t._left[merged], t._right[merged]
        assert t._is_valid_pair(a, b, merged), merged


def test_packed_format_and_cache_consistency(ours):
    assert np.dtype(np.intc).itemsize == tk._INT_SIZE
    text = "a photo of a dog's toy, 2019 — Straße 東京"
    first = ours.encode(text)
    assert ours.encode(text) == first  # from the cache now
    assert Tokenizer()._encode_chunks(["dog's", "dog"]) == {}


def test_nfc_and_idempotence_assumptions():
    # lower-casing never creates whitespace, so splitting after it is the same as before
    assert not any(chr(c).lower().isspace() != chr(c).isspace() for c in range(0x110000))
    assert unicodedata.is_normalized("NFC", "e\u0301") is False


def test_reference_path_gives_the_fast_paths_ids_on_the_hostile_corpus(ours, corpus):
    """The short reference BPE (cliplab.tokenizer.reference) and the fast path agree on every
    text of the hostile corpus, and both on OpenAI's ids (test_encode_matches_openai)."""
    from cliplab.tokenizer.reference import ReferenceTokenizer

    reference = ReferenceTokenizer()
    texts = [t for t in corpus if len(t) < 2000]  # the reference is quadratic on long words
    assert len(texts) > 5000
    assert [reference.encode(t) for t in texts] == [ours.encode(t) for t in texts]
    ids = ours.encode("A photo of a cat! 日本語 &amp; ﬁne (“x”)")
    assert reference.decode(ids) == ours.decode(ids)
