"""WIT-style curation: junk detection, whole-word query matching, the per-query cap, and a
mixed pool of real captions (from the sources' own texts) and generated junk.
"""

from __future__ import annotations

import csv
import json
import os
import random
from collections import Counter
from pathlib import Path

import pytest

from cliplab.data import curate
from cliplab.data.curate import (
    CurateConfig,
    EnglishFilter,
    QueryList,
    QueryMatcher,
    build_query_list,
    junk_reason,
    pmi_bigrams,
    tokenize,
    wordnet_lemmas,
)
from cliplab.data.curate.filters import STOPWORDS

#: Captions as the sources write them: emoji labels and tags (emojibase), Tux Paint stamp
#: descriptions, OpenClipart titles.
REAL = [
    "cat face",
    "an emoji of a grinning face",
    "waving hand: hello, wave",
    "red heart (love, heart)",
    "dog face emoji",
    "ice cream: dessert, sweet",
    "soccer ball",
    "hot beverage: coffee, drink, tea",
    "A badger.",
    "A zebra.",
    "A red apple.",
    "A pair of open scissors.",
    "A stethoscope lets your doctor listen to your heart and lungs.",
    "An astronaut making a spacewalk!",
    "A hot air balloon.",
    "A rubber duck.",
    "Remember to flush the toilet and wash your hands with soap!",
    "A teapot.",
    "Soft Blue Couch",
    "Funny music note",
    "Router",
    "Rainbow",
    "Aircraft with propeller",
    "chemistry flask",
    "Australian Maps",
    "handphone",
]
#: Real non-English texts (Tux Paint translations of the descriptions above).
FOREIGN = [
    "Ein Dachs.",
    "Un tejón.",
    "Барсук.",
    "Una cebra.",
    "Un pomme rouge.",
    "Une paire de ciseaux ouverts.",
    "Un astronauta che fa una passeggiata spaziale!",
    "Una tetera.",
    "Gumowa kaczka.",
    "Balon na gorące powietrze.",
    "カバ",
    "黄色柠檬。",
    "Ο καναπές.",
]
#: The content words of REAL (plus a few), standing in for an English vocabulary and WordNet
#: when wordfreq is not installed.
VOCAB = sorted(
    {w for text in REAL for w in tokenize(text)}
    | {"apple", "dessert", "making", "listen", "lets", "maps", "note", "hand", "flower"}
)


def _camera(rng: random.Random) -> str:
    y, mo, d, h, mi, s = (
        rng.randint(2005, 2023),
        rng.randint(1, 12),
        rng.randint(1, 28),
        rng.randint(0, 23),
        rng.randint(0, 59),
        rng.randint(0, 59),
    )
    return rng.choice(
        [
            f"IMG_{y}{mo:02d}{d:02d}_{h:02d}{mi:02d}{s:02d}.JPG",
            f"DSC{rng.randint(0, 99999):05d}.JPG",
            f"DSCN{rng.randint(0, 9999):04d}",
            f"P{rng.randint(1000000, 1999999)}.jpg",
            f"{y}{mo:02d}{d:02d}_{h:02d}{mi:02d}{s:02d}",
            f"IMG-{y}{mo:02d}{d:02d}-WA{rng.randint(0, 9999):04d}.jpg",
            f"Screenshot {y}-{mo:02d}-{d:02d} at {h}.{mi:02d}.{s:02d}.png",
            f"PXL_{y}{mo:02d}{d:02d}_{h:02d}{mi:02d}{s:02d}{rng.randint(100, 999)}.jpg",
            f"image ({rng.randint(1, 40)})",
            f"MVI_{rng.randint(1000, 9999)}.MOV",
        ]
    )


def _junk(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(
        ["filename", "filename", "gibberish", "placeholder", "digits", "empty", "symbols"]
    )
    if kind == "filename":
        return kind, _camera(rng)
    if kind == "gibberish":
        letters = "bcdfghjklmnpqrstvwxz" + "aeiou" * 2
        words = ["".join(rng.choice(letters) for _ in range(rng.randint(5, 9))) for _ in range(3)]
        return kind, " ".join(words[: rng.randint(1, 3)])
    if kind == "placeholder":
        return kind, rng.choice(
            ["untitled", "image", "Photo", "no title", "thumbnail", "N/A", "click here"]
        )
    if kind == "digits":
        return kind, " ".join(str(rng.randint(0, 10**6)) for _ in range(rng.randint(1, 3)))
    if kind == "empty":
        return kind, rng.choice(["", "  ", "\t"])
    return kind, "".join(rng.choice("#*!?-_=+~.") for _ in range(rng.randint(1, 12)))


def _pool(path: Path, copies: int = 3, junk: int = 300, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = [{"origin": "real", "caption": t} for t in REAL for _ in range(copies)]
    rows += [{"origin": "foreign", "caption": t} for t in FOREIGN for _ in range(copies)]
    rows += [{"origin": f"junk-{k}", "caption": t} for k, t in (_junk(rng) for _ in range(junk))]
    rng.shuffle(rows)
    for i, row in enumerate(rows):
        row["id"] = str(i)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["id", "origin", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


@pytest.fixture
def wordnet(tmp_path: Path) -> Path:
    """A WordNet ``index.noun`` laid out like the real one (license lines start with spaces)."""
    root = tmp_path / "wordnet"
    root.mkdir()
    lines = ["  1 This software and database is being provided", "  2 WordNet 3.0 Copyright 2006"]
    lines += [f"{w} n 1 1 @ 1 0 0000000" for w in VOCAB] + [
        "ice_cream n 1 2 @ ~ 1 1 07614500",
        "hot_air_balloon n 1 1 @ 1 0 0",
    ]
    (root / "index.noun").write_text("\n".join(lines) + "\n")
    (root / "index.verb").write_text("wash v 1 1 @ 1 0 0\n")
    return root


def _config(wordnet: Path, **overrides) -> CurateConfig:
    options = dict(
        use_wordfreq=False,
        wordnet_dir=str(wordnet),
        workers=1,
        chunk_size=64,
        bigram_min_count=2,
        progress_every=0.0,
    )
    return CurateConfig(**{**options, **overrides})


def _kept(out: Path) -> list[dict]:
    return [
        json.loads(line) for line in (out / "kept.jsonl").read_text(encoding="utf-8").splitlines()
    ]


# --------------------------------------------------------------------------- pieces


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("IMG_20160716_113957.JPG", "filename"),
        ("20160716_113957.JPG", "filename"),
        ("20160716_113957", "filename"),
        ("DSC01234", "filename"),
        ("P1010234.jpg", "filename"),
        ("IMG-20160716-WA0003.jpg", "filename"),
        ("image (3)", "filename"),
        ("Screenshot 2020-01-01 at 10.00.00.png", "filename"),
        ("cat.jpg", "filename"),
        ("161590 124180", "no-content"),
        ("#~#-+", "no-content"),
        ("untitled", "no-content"),
        ("N/A", "no-content"),
        ("3f9a1c0e7b2d4f6a8c1e3b5d7f9a2c4e", "filename"),
        ("a1b2c3d4e5f60718293a4b5c6d7e8f90.png", "filename"),
        ("A zebra.", None),
        ("Route 66", None),
        ("Apollo 11 on the Moon", None),
        ("2016 Olympic Games", None),
    ],
)
def test_junk_reason(text, reason):
    assert junk_reason(text) == reason


def test_tokenize():
    assert tokenize("Don’t PANIC: ice-cream, 42 cats!") == [
        "don't",
        "panic",
        "ice",
        "cream",
        "42",
        "cats",
    ]


def test_query_matching_is_whole_word():
    queries = build_query_list(
        words=["cat", "ice", "cream", "the", "42"],
        wordnet=["ice_cream", "hot dog"],
        bigrams=["red apple"],
    )
    assert (
        "the" not in queries.queries and "42" not in queries.queries
    )  # stop words and numbers name nothing
    assert queries.counts() == {"word": 3, "wordnet": 2, "bigram": 1}
    for automaton in (None, False):
        match = QueryMatcher(queries.queries, use_automaton=automaton)

        def found(text: str, match: QueryMatcher = match) -> set[str]:
            return {queries.queries[i] for i in match(tokenize(text))}

        assert found("A category of concatenated words") == set()
        assert found("The cat ate an ice cream cone") == {"cat", "ice", "cream", "ice cream"}
        assert found("a red apple and a hot dog") == {"red apple", "hot dog"}
        assert found("") == set()


def test_automaton_and_fallback_agree():
    pytest.importorskip("ahocorasick")
    rng = random.Random(1)
    vocab = ["cat", "dog", "red", "apple", "tree", "ice", "cream", "a", "b", "ab", "ba"]
    queries = sorted({" ".join(rng.choices(vocab, k=rng.randint(1, 3))) for _ in range(60)})
    fast, slow = (
        QueryMatcher(queries, use_automaton=True),
        QueryMatcher(queries, use_automaton=False),
    )
    assert fast.automaton is not None and slow.automaton is None
    for _ in range(300):
        tokens = rng.choices(vocab, k=rng.randint(0, 12))
        assert fast(tokens) == slow(tokens)


def test_english_filter():
    english = EnglishFilter.from_words(VOCAB)
    for text in REAL:
        assert english(text, tokenize(text)), text
    for text in FOREIGN:
        assert not english(text, tokenize(text)), text
    # a vocabulary alone passes half-English texts; frequencies tell "eine" is German
    assert english("Eine Zebra.", ["eine", "zebra"])
    weighted = EnglishFilter(
        {"eine": 3.3, "zebra": 3.4, "badger": 3.5}, {"eine": 6.4, "zebra": 3.0}
    )
    assert weighted("A badger", tokenize("A badger")) and weighted("A zebra", tokenize("A zebra"))
    strict = EnglishFilter(weighted.english, weighted.other, need=0.75)
    assert strict("A zebra", ["a", "zebra"]) and not strict(
        "Eine Zebra.", ["eine", "zebra"]
    )  # "eine" is not English
    assert not english("Барсук и zebra", tokenize("Барсук и zebra"))  # mostly another script


def test_pmi_bigrams_find_collocations():
    rng = random.Random(0)
    words = ["cat", "dog", "red", "blue", "tree", "house", "car", "sun"]
    texts = [" ".join(rng.choices(words, k=6)) for _ in range(400)] + ["new york city"] * 30
    found = {b: (p, c) for b, p, c in pmi_bigrams(texts, min_count=5, min_pmi=3.0)}
    assert "new york" in found and "york city" in found and found["new york"][1] == 30
    assert not any(w in STOP for b in found for w in b.split() for STOP in [STOPWORDS])


def test_wordnet_lemmas(wordnet):
    lemmas = wordnet_lemmas(wordnet)
    assert (
        "ice cream" in lemmas
        and "wash" in lemmas
        and not any(lemma.startswith(("1", "2", " ")) for lemma in lemmas)
    )
    with pytest.raises(FileNotFoundError):
        wordnet_lemmas(wordnet.parent / "nothing")


def test_query_list_file_roundtrip(tmp_path):
    queries = build_query_list(words=["cat"], bigrams=["ice cream"])
    queries.save(tmp_path / "q.tsv")
    assert QueryList.load(tmp_path / "q.tsv").queries == ["cat", "ice cream"]
    (tmp_path / "plain.txt").write_text("Dog\nthe\nhot_dog\n")
    assert QueryList.load(tmp_path / "plain.txt").queries == ["dog", "hot dog"]


# --------------------------------------------------------------------------- the mixed pool


def test_mixed_pool_keeps_real_captions_and_drops_junk(tmp_path, wordnet):
    rows = _pool(tmp_path / "pool.csv")
    out = tmp_path / "out"
    report = curate.curate(
        [str(tmp_path / "pool.csv")], out, _config(wordnet), id_column="id", log=lambda *_: None
    )
    kept_ids = {k["id"] for k in _kept(out)}
    by_origin: dict[str, list[bool]] = {}
    for row in rows:
        by_origin.setdefault(row["origin"].split("-")[0], []).append(row["id"] in kept_ids)
    assert all(by_origin["real"]), [
        r["caption"] for r in rows if r["origin"] == "real" and r["id"] not in kept_ids
    ]
    assert not any(by_origin["junk"]), [
        r["caption"] for r in rows if r["origin"].startswith("junk") and r["id"] in kept_ids
    ]
    assert not any(by_origin["foreign"])
    dropped = report["dropped"]
    junk_kinds = {r["origin"] for r in rows}
    assert dropped["filename"] == sum(r["origin"] == "junk-filename" for r in rows)
    assert (
        dropped["empty"] == sum(r["origin"] == "junk-empty" for r in rows) and dropped["cap"] == 0
    )
    assert "junk-gibberish" in junk_kinds and dropped["non-english"] >= len(FOREIGN) * 3
    assert report["kept"] == len(REAL) * 3 and report["texts"] == len(rows)
    assert report["texts_per_second"] > 0 and (out / "report.md").read_text().startswith(
        "# Curation report"
    )
    kept = _kept(out)
    assert all(k["query"] in tokenize(k["text"]) or " " in k["query"] for k in kept)
    assert kept[0]["row"]["origin"] == "real"
    # bigrams with a high PMI in the kept-able texts become queries
    assert "ice cream" in (out / "queries.tsv").read_text()


def test_the_cap_is_respected(tmp_path, wordnet):
    path = tmp_path / "cats.csv"
    texts = (
        [f"a cat number {i}" for i in range(30)]
        + [f"a cat and a dog {i}" for i in range(10)]
        + ["a zebra"] * 3
    )
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["caption"])
        w.writerows([t] for t in texts)
    out = tmp_path / "out"
    config = _config(
        wordnet,
        cap=5,
        use_wordnet=False,
        bigrams=0,
        english_vocab=("a", "cat", "dog", "zebra", "number", "and"),
        extra_queries=("cat", "dog", "zebra"),
    )
    report = curate.curate([str(path)], out, config, log=lambda *_: None)
    counts: dict[str, int] = {}
    for k in _kept(out):
        counts[k["query"]] = counts.get(k["query"], 0) + 1
    assert counts == {
        "cat": 5,
        "dog": 5,
        "zebra": 3,
    }  # a cat-and-dog text counts against dog once cat is full
    assert report["dropped"]["cap"] == len(texts) - 13 and report["queries_at_cap"] == 2
    assert report["cap_effects"]["most_capped"][0][0] == "cat"


def test_workers_do_not_change_the_result(tmp_path, wordnet):
    _pool(tmp_path / "pool.csv", copies=2, junk=100)
    one, two = tmp_path / "one", tmp_path / "two"
    curate.curate([str(tmp_path / "pool.csv")], one, _config(wordnet, cap=2), log=lambda *_: None)
    curate.curate(
        [str(tmp_path / "pool.csv")],
        two,
        _config(wordnet, cap=2, workers=2, chunk_size=16),
        log=lambda *_: None,
    )
    assert (one / "kept.jsonl").read_text() == (two / "kept.jsonl").read_text()


def test_webdataset_input_writes_kept_shards(tmp_path, wordnet):
    from cliplab.data.shardwriter import ShardWriter
    from cliplab.data.webdataset import WebDatasetSource

    with ShardWriter(tmp_path / "in", max_samples=4) as writer:
        for i, text in enumerate(
            ["A zebra.", "DSC01234", "Ein Dachs.", "cat face", "untitled", "A teapot."]
        ):
            members = (
                {"png": b"\x89PNG fake", "txt": text}
                if i % 2
                else {"png": b"\x89PNG fake", "json": {"caption": text, "n": i}}
            )
            writer.write(f"s{i}", members)
    out = tmp_path / "out"
    report = curate.curate([str(tmp_path / "in")], out, _config(wordnet), log=lambda *_: None)
    assert report["kept"] == 3
    samples = list(WebDatasetSource(sorted(str(p) for p in (out / "shards").glob("*.tar"))).scan())
    metas = [json.loads(s.members["json"]) for s in samples]
    assert [m["source_key"] for m in metas] == ["s0", "s3", "s5"] and metas[0]["n"] == 0
    assert all(s.members["png"] == b"\x89PNG fake" for s in samples) and metas[1][
        "curate_query"
    ] in ("cat", "cat face", "face")


def test_malformed_shards_are_counted_by_the_data_layers_reasons(tmp_path, wordnet):
    """Shards are read by the data layer's reader: a duplicate key and a truncated shard are
    counted by reason and skipped, and the good samples around them are curated."""
    import io
    import tarfile

    def member(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    good = tmp_path / "in" / "a.tar"
    good.parent.mkdir()
    with tarfile.open(good, "w") as tar:
        member(tar, "s0.txt", b"A zebra.")
        member(tar, "s1.txt", b"cat face")
        member(tar, "s1.txt", b"cat face again")  # the same key and extension twice
        member(tar, "s2.txt", b"A teapot.")
    data = good.read_bytes()
    (tmp_path / "in" / "b.tar").write_bytes(data[: 3 * 512 + 100])  # cut in the third member
    out = tmp_path / "out"
    report = curate.curate([str(tmp_path / "in")], out, _config(wordnet), log=lambda *_: None)
    assert report["dropped"]["duplicate-key"] == 1
    assert report["dropped"]["truncated-tar"] == 1
    kept = [k["text"] for k in _kept(out)]
    assert kept.count("A zebra.") == 2 and kept.count("A teapot.") == 1


def test_jsonl_and_parquet_inputs(tmp_path, wordnet):
    rows = [
        {"url": f"http://x/{i}.jpg", "caption": t}
        for i, t in enumerate(["A zebra.", "IMG_1234.JPG", "A red apple."])
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\nnot json\n")
    report = curate.curate(
        [str(tmp_path / "a.jsonl")],
        tmp_path / "o1",
        _config(wordnet),
        id_column="url",
        log=lambda *_: None,
    )
    assert report["kept"] == 2 and report["texts"] == 4
    assert _kept(tmp_path / "o1")[0]["id"] == "http://x/0.jpg"
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    report = curate.curate(
        [str(tmp_path / "a.parquet")], tmp_path / "o2", _config(wordnet), log=lambda *_: None
    )
    assert report["kept"] == 2


def test_cli(tmp_path, wordnet, capsys):
    from cliplab.cli import main

    _pool(tmp_path / "pool.csv", copies=1, junk=50)
    queries = tmp_path / "q.txt"
    queries.write_text("\n".join(VOCAB) + "\n")
    code = main(
        [
            "data",
            "curate",
            str(tmp_path / "pool.csv"),
            "--out",
            str(tmp_path / "out"),
            "--queries",
            str(queries),
            "--no-wordfreq",
            "--workers",
            "1",
            "--cap",
            "3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "texts/s" in printed and "kept" in printed
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["kept"] == len(REAL) and report["queries"]["file"] == len(
        [w for w in VOCAB if w not in STOPWORDS and len(w) > 1]
    )
    assert (
        main(["data", "curate", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    )


# --------------------------------------------------------------------------- the real thing


REAL_SOURCES = Path(
    os.environ.get("CLIPLAB_SOURCES", Path(__file__).resolve().parents[1] / "data" / "sources")
)


@pytest.mark.slow
@pytest.mark.skipif(
    not (REAL_SOURCES / "apt/tuxpaint-stamps-default").is_dir(), reason="real sources not installed"
)
def test_real_captions_with_wordfreq(tmp_path):
    """The full recipe (wordfreq words, WordNet, PMI bigrams) on Tux Paint's real English
    descriptions and their real translations, mixed with generated junk."""
    pytest.importorskip("wordfreq")
    from cliplab.recipes.builders.tuxpaint import load_stamps, stamps_root

    stamps, _ = load_stamps(stamps_root(REAL_SOURCES))
    rng = random.Random(0)
    rows = [{"origin": "real", "caption": s.description} for s in stamps]
    rows += [
        {"origin": "foreign", "caption": t}
        for s in rng.sample(stamps, 300)
        for lang, t in s.translations.items()
        if lang in ("de", "fr", "es", "ru", "ja", "zh_CN")
    ]
    rows += [{"origin": "junk", "caption": _junk(rng)[1]} for _ in range(500)]
    with open(tmp_path / "pool.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, ["origin", "caption"])
        writer.writeheader()
        writer.writerows(rows)
    from cliplab.recipes.install import source_path

    try:
        wordnet_dir = str(source_path("wordnet-base", REAL_SOURCES))
    except FileNotFoundError:
        wordnet_dir = None  # the recipe then runs without WordNet lemmas
    config = CurateConfig(workers=2, cap=20, progress_every=0.0, wordnet_dir=wordnet_dir)
    curate.curate([str(tmp_path / "pool.csv")], tmp_path / "out", config, log=lambda *_: None)
    kept = {k["row"]["caption"] for k in _kept(tmp_path / "out")}
    share = {
        o: sum(r["caption"] in kept for r in rows if r["origin"] == o)
        / sum(r["origin"] == o for r in rows)
        for o in ("real", "foreign", "junk")
    }
    assert share["real"] > 0.9 and share["foreign"] < 0.1 and share["junk"] < 0.01, share


# --------------------------------------------------------------------------- balancing, Ray


def test_balance_probability_is_metaclips_formula():
    from cliplab.data.curate.balance import balance_draw, balance_probability

    counts = [10, 40, 100_000]
    assert balance_probability([0], counts, 20) == 1.0  # a rare query keeps everything
    assert balance_probability([1], counts, 20) == pytest.approx(0.5)
    assert balance_probability([1, 2], counts, 20) == pytest.approx(1 - 0.5 * (1 - 20 / 100_000))
    draws = [balance_draw(0, f"id{i}") for i in range(20_000)]
    assert min(draws) >= 0 and max(draws) < 1 and abs(sum(draws) / len(draws) - 0.5) < 0.01
    assert draws[:5] == [balance_draw(0, f"id{i}") for i in range(5)]  # fixed by seed and id
    assert balance_draw(1, "id0") != draws[0]


def _frequent_pool(path: Path) -> None:
    """Many captions of a few queries (cat 300, dog 60, zebra 5) plus junk."""
    texts = (
        [f"a cat number {i}" for i in range(300)]
        + [f"a dog number {i}" for i in range(60)]
        + [f"a zebra number {i}" for i in range(5)]
        + [f"DSC{i:05d}.jpg" for i in range(40)]
    )
    random.Random(1).shuffle(texts)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "caption"])
        w.writerows([i, t] for i, t in enumerate(texts))


def _balance_config(wordnet: Path, **overrides) -> CurateConfig:
    return _config(
        wordnet,
        cap=20,
        use_wordnet=False,
        bigrams=0,
        english_vocab=("a", "cat", "dog", "zebra", "number"),
        extra_queries=("cat", "dog", "zebra"),
        **overrides,
    )


def test_balancing_keeps_rare_queries_whole_and_samples_frequent_ones(tmp_path, wordnet):
    _frequent_pool(tmp_path / "pool.csv")
    kept_by_seed = []
    for seed in (0, 1):
        out = tmp_path / f"out{seed}"
        report = curate.curate(
            [str(tmp_path / "pool.csv")],
            out,
            _balance_config(wordnet, select="balance", seed=seed),
            id_column="id",
            log=lambda *_: None,
        )
        counts = Counter(k["query"] for k in _kept(out))
        assert counts["zebra"] == 5  # count 5 < t = 20: probability 1
        # cat: p = 20/300 per pair, dog: 20/60 -> about 20 each (binomial spread)
        assert 8 <= counts["cat"] <= 34 and 8 <= counts["dog"] <= 34, counts
        assert report["dropped"]["balance"] == 365 - sum(counts.values())
        assert report["dropped"]["filename"] == 40
        kept_by_seed.append([k["id"] for k in _kept(out)])
    assert kept_by_seed[0] != kept_by_seed[1]  # the seed matters
    again = tmp_path / "again"
    curate.curate(
        [str(tmp_path / "pool.csv")],
        again,
        _balance_config(wordnet, select="balance", seed=0, workers=2, chunk_size=16),
        id_column="id",
        log=lambda *_: None,
    )
    assert [k["id"] for k in _kept(again)] == kept_by_seed[0]  # deterministic, any workers


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="needs Ray Data: pip install 'cliplab[ray]'")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize(("select", "limit"), [("cap", None), ("balance", None), ("cap", 150)])
def test_ray_engine_keeps_the_same_set(tmp_path, wordnet, ray_cluster, select, limit):
    """On a local Ray cluster, for CSV and WebDataset inputs over several files, the kept set
    (ids, texts, queries, order, and the shards) equals the local engine's."""
    from cliplab.data.shardwriter import ShardWriter

    _frequent_pool(tmp_path / "a.csv")
    _pool(tmp_path / "b.csv", copies=2, junk=100)
    with ShardWriter(tmp_path / "shards", max_samples=7) as writer:
        for i in range(30):
            text = ["a cat number", "a zebra number", "DSC0001.jpg"][i % 3] + f" {i}"
            writer.write(f"{i:04d}", {"png": b"\x89PNG fake %d" % i, "txt": text})
    inputs = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv"), str(tmp_path / "shards")]
    config = dict(select=select, chunk_size=50, limit=limit)
    local, remote = tmp_path / "local", tmp_path / "ray"
    ours = curate.curate(
        inputs, local, _balance_config(wordnet, **config), id_column="id", log=lambda *_: None
    )
    theirs = curate.curate(
        inputs,
        remote,
        _balance_config(wordnet, engine="ray", **config),
        id_column="id",
        log=lambda *_: None,
    )
    assert (local / "kept.jsonl").read_text() == (remote / "kept.jsonl").read_text()
    assert ours["dropped"] == theirs["dropped"] and ours["kept"] == theirs["kept"] > 0
    assert ray_cluster.is_initialized()  # a cluster the caller started is left running
    if limit is not None:
        assert ours["texts"] == theirs["texts"] == limit
        return
    from cliplab.data.webdataset import WebDatasetSource

    shards = [sorted((d / "shards").glob("*.tar")) for d in (local, remote)]
    assert len(shards[0]) == len(shards[1]) > 0
    a = list(WebDatasetSource([str(p) for p in shards[0]]).scan())
    b = list(WebDatasetSource([str(p) for p in shards[1]]).scan())
    assert [(r.key, r.members) for r in a] == [(r.key, r.members) for r in b]
