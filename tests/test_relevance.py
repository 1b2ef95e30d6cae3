"""Relevance and query algebra (:mod:`cliplab.search.relevance`): calibrated scores stored
with the collection, ``min_relevance`` (possibly no results), negative terms and mixes of
words and an image, through the library, the CLI and the web API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import cliplab
from cliplab.cli import main
from cliplab.search import relevance
from cliplab.search.query import Searcher
from cliplab.search.relevance import Calibration, combine, parse_query
from test_search import make_folder, run_embed


def test_parse_query() -> None:
    assert parse_query("beach -people") == ("beach", ["people"])
    assert parse_query('a dog -"red car" -cat on grass') == ("a dog on grass", ["red car", "cat"])
    assert parse_query("a well-known place - today") == ("a well-known place - today", [])
    assert parse_query("-people") == ("", ["people"])


def test_combine_subtracts_and_mixes() -> None:
    a, b, c = np.eye(3, dtype=np.float32)
    assert np.allclose(combine([(a, 1.0)]), a)
    mixed = combine([(a, 0.5), (b, 0.5)])
    assert np.allclose(mixed, (a + b) / math.sqrt(2))
    pushed = combine([(a + c, 1.0)], [c], negative_weight=1.0)
    assert np.allclose(pushed, a)
    with pytest.raises(ValueError, match="cancel"):
        combine([(a, 1.0)], [a], negative_weight=1.0)
    with pytest.raises(ValueError, match="needs words or an image"):
        combine([], [a])


def test_calibration_is_a_monotone_share_of_null_queries() -> None:
    cal = Calibration(null_best=(0.1, 0.2, 0.3, 0.4))
    r = cal.relevance([0.0, 0.15, 0.2, 0.35, 0.9])
    assert r.tolist() == [0.0, 0.25, 0.375, 0.75, 1.0]
    assert np.all(np.diff(cal.relevance(np.linspace(-1, 1, 50))) >= 0)
    sig = Calibration(scale=10.0, bias=-5.0)
    assert sig.relevance([0.5])[0] == pytest.approx(0.5)


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("relevance")
    folder = make_folder(root / "pics", n=24, bad=False)
    run_embed(folder, root / "c")
    return root / "c"


def test_hits_carry_a_stored_calibration_and_min_relevance_filters(collection, monkeypatch):
    searcher = Searcher(collection)
    hits = searcher.search_text("a red square", k=24)
    assert all(0.0 <= h.relevance <= 1.0 for h in hits)
    assert [h.relevance for h in hits] == sorted((h.relevance for h in hits), reverse=True)
    stored = json.loads((collection / relevance.CALIBRATION_FILE).read_text())
    assert stored["size"] == 24 and len(stored["null_best"]) == len(relevance.NULL_QUERIES)
    assert stored["fingerprint"] == searcher.collection.fingerprint
    # the null queries' best scores are what the model gives them over the collection
    vectors = searcher.collection.image_embeddings()
    queries = cliplab.encode.encode_texts(searcher.model, None, list(relevance.NULL_QUERIES))
    best = np.sort((vectors @ queries.numpy().T).max(axis=0))
    assert np.allclose(stored["null_best"], best, atol=1e-5)
    # read back, not measured again
    monkeypatch.setattr(relevance, "NULL_QUERIES", ())
    again = Searcher(collection)
    assert again.calibration.null_best == tuple(stored["null_best"])
    threshold = hits[len(hits) // 2].relevance
    kept = again.search_text("a red square", k=24, min_relevance=threshold)
    assert kept and all(h.relevance >= threshold for h in kept) and len(kept) < len(hits)
    assert again.search_text("a red square", k=24, min_relevance=1.01) == []


def test_negative_terms_and_mixes_change_the_query(collection):
    searcher = Searcher(collection)
    plain = searcher.query_vector("a red square")
    minus = searcher.query_vector("a red square -blue")
    assert not np.allclose(plain, minus)
    expected = combine([(searcher.embed_text("a red square"), 1.0)], [searcher.embed_text("blue")])
    assert np.allclose(minus, expected, atol=1e-6)  # the parts go through the model together
    image = next((collection.parent / "pics").glob("green*.png"))
    mix = searcher.query_vector("a red square", image, image_weight=0.25)
    parts = [(searcher.embed_text("a red square"), 0.75), (searcher.embed_image(image), 0.25)]
    assert np.allclose(mix, combine(parts), atol=1e-6)
    only_image = searcher.search(None, image, k=3)
    assert only_image[0].score == pytest.approx(1.0, abs=2e-3)


def test_relevance_in_the_cli_and_the_api(collection, capsys):
    argv = ["search", str(collection), "a red square", "-k", "5", "--json"]
    assert main(argv) == 0
    assert all("relevance" in h for h in json.loads(capsys.readouterr().out))
    assert main([*argv, "--min-relevance", "1.01"]) == 2
    assert main(["search", str(collection), "a red square", "--min-relevance", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "no results" in out or out.strip()
    image = str(next((collection.parent / "pics").glob("blue*.png")))
    assert main(["search", str(collection), "at night", "--image", image, "--json"]) == 0
    assert main(["search", str(collection), "x", "--image", image, "--captions"]) == 2

    from fastapi.testclient import TestClient

    from cliplab.serve import create_app

    client = TestClient(create_app(Searcher(collection)))
    ok = client.get("/search", params={"q": "a red square -blue", "k": 5, "min_relevance": 0.0})
    assert ok.status_code == 200 and all("relevance" in h for h in ok.json()["results"])
    none = client.get("/search", params={"q": "a red square", "min_relevance": 1.0})
    assert none.status_code == 200
    for bad in (
        {"q": "x", "min_relevance": 2},
        {"q": "x", "min_relevance": "many"},
        {"q": "-people"},
    ):
        assert client.get("/search", params=bad).status_code in (400, 422), bad
    with open(image, "rb") as f:
        data = f.read()
    files = {"image": ("b.png", data, "image/png")}
    mixed = client.post("/search", files=files, data={"q": "at night", "image_weight": "0.3"})
    assert mixed.status_code == 200 and mixed.json()["results"]
    bad = client.post("/search", files=files, data={"image_weight": "3"})
    assert bad.status_code == 400
