"""Tokenizer speed: cliplab's ``tokenize`` against OpenAI's ``clip.tokenize``, cold caches.

Workload: a deterministic (seeded) set of web-alt-text-like captions. English captions are
built from the BPE vocabulary's whole-word tokens (content words, sampled Zipf-like by merge
rank: earlier merge = more frequent word), with 25% function words and 8% out-of-vocabulary
words (compounds, typos, made-up names, product codes: the long tail that makes a cold cache
cold), in caption and product-title templates with numbers, prices, sizes, hashtags,
contractions, "&", curly apostrophes and the odd emoji or accented name; 12% are multilingual
captions (French, German, Spanish, Portuguese, Italian, Polish, Turkish, Vietnamese, Russian,
Greek, Chinese, Japanese, Korean, Arabic, Hindi, Thai).

Each timed run uses fresh tokenizer instances for both (empty caches) and the same texts, and
measures ``tokenize(list_of_texts)`` end to end (tensor out); instance creation is timed
separately. The result prints and goes to ``benchmarks/results/tokenizer.json``.

Figures are the best of ``--repeats`` runs for each side (the usual way to time on a shared
machine: other load only ever adds time); medians are reported too.

    python benchmarks/bench_tokenizer.py [--texts 30000] [--repeats 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from itertools import accumulate
from pathlib import Path

import ftfy
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))  # refs.py: loads OpenAI's clip package

from cliplab.tokenizer import Tokenizer  # noqa: E402

MULTILINGUAL_SHARE = 0.12

MULTILINGUAL: dict[str, list[str]] = {
    "fr": [
        "Une femme marche sur la plage au coucher du soleil",
        "Château de Versailles, vue aérienne",
        "Pâtisserie française : éclairs au café",
        "Robe d'été à fleurs pour femme",
        "Le marché de Noël à Strasbourg",
        "Appartement à louer près de la gare",
        "Recette facile de crêpes maison",
    ],
    "de": [
        "Ein Hund spielt im Schnee",
        "Schöne Aussicht über die Alpen im Frühling",
        "Herren Winterjacke wasserdicht, Größe XL",
        "Straßenbahn in München bei Nacht",
        "Gemütliches Wohnzimmer mit großem Sofa",
        "Frühstück mit Brötchen und Kaffee",
    ],
    "es": [
        "Niños jugando al fútbol en el parque",
        "Paella valenciana con mariscos",
        "Vista panorámica de la ciudad de México",
        "Zapatillas de mujer para correr, talla 38",
        "Atardecer en la playa de Cádiz",
        "Diseño de interiores: cocina pequeña y moderna",
    ],
    "pt": [
        "Praia de Copacabana no verão",
        "Bolo de cenoura com cobertura de chocolate",
        "Casa à venda em São Paulo",
        "Camiseta básica masculina algodão",
        "Vista do Cristo Redentor ao entardecer",
    ],
    "it": [
        "Pizza margherita appena sfornata",
        "Vista sul Lago di Como in autunno",
        "Scarpe da uomo in pelle, colore marrone",
        "Il Colosseo illuminato di notte",
        "Caffè espresso al bar",
    ],
    "pl": [
        "Zamek królewski w Warszawie zimą",
        "Pierogi ruskie z cebulką",
        "Dziewczyna czyta książkę w parku",
        "Żółty tramwaj na ulicy Krakowa",
    ],
    "tr": [
        "İstanbul Boğazı'nda gün batımı",
        "Kadın yazlık elbise çiçek desenli",
        "Türk kahvesi ve lokum",
        "Kapadokya'da sıcak hava balonları",
    ],
    "vi": [
        "Phở bò Hà Nội truyền thống",
        "Vịnh Hạ Long nhìn từ trên cao",
        "Áo dài Việt Nam màu đỏ",
        "Chợ nổi Cái Răng buổi sáng",
    ],
    "ru": [
        "Кошка спит на диване",
        "Красная площадь в Москве зимой",
        "Женское платье летнее, размер 44",
        "Осенний лес и река на закате",
        "Домашний борщ со сметаной",
        "Собака бежит по снегу",
    ],
    "el": [
        "Ηλιοβασίλεμα στη Σαντορίνη",
        "Παραδοσιακή ελληνική σαλάτα",
        "Η Ακρόπολη της Αθήνας",
    ],
    "zh": [
        "一只猫坐在窗台上",
        "北京故宫的雪景",
        "夏季新款女士连衣裙",
        "上海外滩夜景",
        "美味的四川火锅",
        "桂林山水风景照片",
    ],
    "ja": [
        "東京タワーと夜景",
        "かわいい柴犬の写真",
        "京都の紅葉と寺院",
        "メンズ ランニングシューズ 軽量",
        "富士山と桜の風景",
        "手作りのお弁当",
    ],
    "ko": [
        "서울 남산타워 야경",
        "귀여운 고양이가 잠을 자고 있다",
        "여성 겨울 패딩 코트",
        "제주도 바다 풍경",
        "맛있는 김치찌개 레시피",
    ],
    "ar": [
        "غروب الشمس على شاطئ البحر",
        "مسجد الشيخ زايد في أبوظبي",
        "فستان سهرة نسائي باللون الأسود",
        "قهوة عربية مع التمر",
    ],
    "hi": [
        "ताजमहल का सुंदर दृश्य",
        "भारतीय शादी की सजावट",
        "गरमा गरम समोसे और चाय",
        "हिमालय के पहाड़ों में सूर्योदय",
    ],
    "th": [
        "วัดพระแก้วกรุงเทพ",
        "ต้มยำกุ้งรสเด็ด",
        "ชายหาดภูเก็ตในฤดูร้อน",
    ],
}

ACCENTED_NAMES = ["café", "Pokémon", "Beyoncé", "naïve", "crème brûlée", "jalapeño", "Zürich"]
EMOJI = ["😍", "🔥", "❤️", "👍🏽", "🇺🇸", "👨‍👩‍👧", "✨", "🎉", "☕"]
BRANDS = ["Nike", "Adidas", "IKEA", "Canon", "Samsung", "Apple", "Lego", "Zara", "Sony", "Bosch"]
COLORS = ["Black", "White", "Red", "Navy Blue", "Grey", "Beige", "Olive Green", "Pink"]


# fmt: off
FUNCTION_WORDS = ["a", "the", "of", "and", "in", "on", "with", "to", "for", "at", "by", "from",
    "an", "is", "are", "this", "that", "it", "its", "new", "our", "your", "my", "two", "one",
    "near", "over", "under", "into", "during", "without", "his", "her", "their"]
# fmt: on

# fmt: off
SYLLABLES = ["ka", "ro", "mi", "zen", "tal", "vor", "li", "an", "ez", "bru", "no", "sha", "ter",
    "vik", "lo", "ma", "dor", "qui", "fen", "ix", "ul", "ba"]
# fmt: on


def english_words(tokenizer: Tokenizer, limit: int = 30000) -> list[str]:
    """Content words: alphabetic whole-word tokens of the vocabulary, in merge order.

    Merge order is roughly frequency order. Word-final pieces that also end many other
    tokens ("ing", "er", "tion") are left out, so what remains is mostly real words.
    """
    right_parts = Counter(tokenizer._right[m] for m in range(512, len(tokenizer._right)))
    words = []
    for token, index in sorted(tokenizer.encoder.items(), key=lambda kv: kv[1]):
        if index < 512 or not token.endswith("</w>"):
            continue
        word = token[:-4]
        if word.isascii() and word.isalpha() and len(word) > 2 and right_parts[index] <= 3:
            words.append(word)
            if len(words) == limit:
                break
    return words


def make_captions(n: int, seed: int, words: list[str]) -> list[str]:
    """``n`` deterministic web-alt-text-like captions (see the module docstring)."""
    rng = random.Random(seed)
    cum_weights = list(accumulate(1.0 / (rank + 10) for rank in range(len(words))))  # Zipf

    def rare() -> str:
        """A word outside the vocabulary: a compound, a typo, a name or a product code."""
        kind = rng.random()
        a, b = rng.choices(words, cum_weights=cum_weights, k=2)
        if kind < 0.35:
            return a + b
        if kind < 0.6 and len(a) > 3:
            i = rng.randrange(1, len(a) - 1)
            return a[:i] + a[i + 1] + a[i] + a[i + 2 :]  # swapped letters
        if kind < 0.85:
            return "".join(rng.choices(SYLLABLES, k=rng.randint(2, 4))).capitalize()
        return f"{rng.choice('ABCDGHKMRSTXZ')}{rng.choice('ABCDEKLMRSTX')}{rng.randint(10, 9999)}"

    def w(k: int) -> list[str]:
        out = rng.choices(words, cum_weights=cum_weights, k=k)
        for i in range(k):
            roll = rng.random()
            if roll < 0.25:
                out[i] = rng.choice(FUNCTION_WORDS)
            elif roll < 0.33:
                out[i] = rare()
        return out

    def phrase(k: int) -> str:
        return " ".join(w(k))

    templates: list[Callable[[], str]] = [
        lambda: f"a photo of a {phrase(rng.randint(1, 3))}",
        lambda: f"{phrase(rng.randint(4, 14)).capitalize()}.",
        lambda: f"{phrase(rng.randint(3, 9)).title()} - Stock Photo",
        lambda: (
            f"{rng.choice(BRANDS)} {phrase(rng.randint(2, 5)).title()} - "
            f"{rng.choice(COLORS)} | Size {rng.randint(4, 14)}"
        ),
        lambda: f"{phrase(rng.randint(3, 8))}, {rng.randint(1950, 2024)}",
        lambda: (
            f"{phrase(rng.randint(2, 6)).title()} ${rng.randint(5, 499)}.{rng.randint(0, 99):02d}"
        ),
        lambda: f"{rng.randint(2, 60)}x{rng.randint(2, 90)} {phrase(rng.randint(2, 5))} poster",
        lambda: f"the {w(1)[0]}'s {phrase(rng.randint(1, 4))} isn't {w(1)[0]}",
        lambda: f"{phrase(rng.randint(3, 10))} #{w(1)[0]} #{w(1)[0]}{w(1)[0]}",
        lambda: f"{phrase(rng.randint(2, 5)).title()} & {phrase(rng.randint(1, 3)).title()}",
        lambda: f"Women’s {phrase(rng.randint(2, 5)).title()}",
        lambda: f"{phrase(rng.randint(2, 6))} {rng.choice(EMOJI)}",
        lambda: f"{phrase(rng.randint(2, 5))} {rng.choice(ACCENTED_NAMES)} {phrase(2)}",
        lambda: f"IMG_{rng.randint(1000, 9999)}.JPG",
        lambda: f"{phrase(rng.randint(15, 30))}, {phrase(rng.randint(5, 15))}.",
    ]
    template_weights = [10, 20, 8, 8, 6, 4, 3, 4, 4, 2, 2, 2, 1, 1, 4]
    languages = list(MULTILINGUAL)
    captions = []
    for _ in range(n):
        if rng.random() < MULTILINGUAL_SHARE:
            lines = MULTILINGUAL[rng.choice(languages)]
            text = rng.choice(lines)
            roll = rng.random()
            if roll < 0.3:
                text = f"{text} {rng.choice(lines)}"
            elif roll < 0.5:
                text = f"{text} {rng.randint(1, 2024)}"
            elif roll < 0.6:
                text = f"{text} - {phrase(rng.randint(1, 3))}"
        else:
            text = rng.choices(templates, weights=template_weights)[0]()
        captions.append(text)
    return captions


def peer_tokenizers(refs) -> dict[str, Callable[[], Callable[[list[str]], torch.Tensor]]]:
    """Factories of the other tokenizers people use, each returning ``texts -> (N, 77)``:
    OpenCLIP's ``SimpleTokenizer`` and transformers' fast (Rust) ``CLIPTokenizerFast`` built
    from the same vocabulary (written by ``cliplab.checkpoints.hf``)."""
    import tempfile

    from cliplab.checkpoints import hf

    factories: dict[str, Callable[[], Callable[[list[str]], torch.Tensor]]] = {}
    oc = refs.open_clip()
    factories["openclip"] = lambda: oc.tokenizer.SimpleTokenizer()
    tf = refs.transformers()
    vocab_dir = Path(tempfile.mkdtemp(prefix="cliplab-hf-tokenizer-"))
    hf.write_hf_tokenizer_files(vocab_dir, 77)

    def hf_fast() -> Callable[[list[str]], torch.Tensor]:
        tok = tf.CLIPTokenizerFast.from_pretrained(str(vocab_dir))

        def run(texts: list[str]) -> torch.Tensor:
            out = tok(
                texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
            )
            ids = out["input_ids"]
            return ids.masked_fill(out["attention_mask"] == 0, 0)  # OpenAI pads with 0

        return run

    factories["transformers-fast"] = hf_fast
    return factories


def time_peers(refs, texts: list[str], reference: torch.Tensor, repeats: int) -> dict[str, dict]:
    """Cold-cache texts/s of each peer (fresh instance per run, best of ``repeats``) and the
    share of rows whose ids equal OpenAI's."""
    results = {}
    for name, factory in peer_tokenizers(refs).items():
        best, out = float("inf"), None
        for _ in range(repeats):
            tokenizer = factory()
            start = time.perf_counter()
            out = tokenizer(texts)
            best = min(best, time.perf_counter() - start)
        same = (out == reference).all(dim=1).float().mean().item()
        results[name] = {
            "texts_per_s": round(len(texts) / best, 1),
            "rows_equal_to_openai": round(same, 4),
        }
        print(
            f"{name}: {len(texts) / best:,.0f} texts/s (cold cache), {same:.2%} of rows equal OpenAI's ids"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--texts", type=int, default=30000, help="number of captions")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "tokenizer.json"
    )
    args = parser.parse_args()

    import refs  # tests/refs.py

    try:
        clip = refs.openai_clip()
        simple_tokenizer = refs.openai_tokenizer_module()
    except BaseException as exc:  # pytest.skip raises a BaseException subclass
        raise SystemExit(f"OpenAI's clip package is needed for the comparison: {exc}") from None

    texts = make_captions(args.texts, args.seed, english_words(Tokenizer()))
    n_ascii = sum(t.isascii() for t in texts)
    workload = (
        f"{len(texts)} synthetic web-alt-text captions (seed {args.seed}): English from the BPE "
        f"vocabulary's word tokens (Zipf by merge rank; 25% function words, 8% out-of-vocabulary "
        f"compounds/typos/names/codes) in caption and product-title templates, "
        f"{MULTILINGUAL_SHARE:.0%} multilingual ({len(MULTILINGUAL)} languages); "
        f"{len(texts) - n_ascii} ({(len(texts) - n_ascii) / len(texts):.1%}) non-ASCII, "
        f"{sum('&' in t for t in texts)} with '&'; mean {statistics.mean(map(len, texts)):.0f} chars"
    )
    print(workload)
    print("examples:", *texts[:6], sep="\n  ")

    # Warm up library code (ftfy, regex, numpy, torch) with throwaway instances and texts.
    warm = make_captions(500, args.seed + 1, english_words(Tokenizer()))
    Tokenizer()(warm, truncate=True)
    clip.clip._tokenizer = simple_tokenizer.SimpleTokenizer()
    clip.tokenize(warm, truncate=True)

    runs: dict[str, dict[str, list[float]]] = {
        name: {"wall": [], "cpu": [], "init": [], "warm": []} for name in ("cliplab", "openai")
    }

    def run_one(name: str) -> torch.Tensor:
        """Fresh instance (timed apart), then tokenize all texts cold, then once more warm."""
        start = time.perf_counter()
        if name == "cliplab":
            tokenizer = Tokenizer()
        else:
            clip.clip._tokenizer = simple_tokenizer.SimpleTokenizer()  # what clip.tokenize uses
            tokenizer = clip.tokenize
        runs[name]["init"].append(time.perf_counter() - start)
        wall, cpu = time.perf_counter(), time.process_time()
        out = tokenizer(texts, truncate=True)
        runs[name]["wall"].append(time.perf_counter() - wall)
        runs[name]["cpu"].append(time.process_time() - cpu)
        wall = time.perf_counter()
        tokenizer(texts, truncate=True)
        runs[name]["warm"].append(time.perf_counter() - wall)
        return out

    for run in range(args.repeats):
        order = ("cliplab", "openai") if run % 2 == 0 else ("openai", "cliplab")
        outputs = {name: run_one(name) for name in order}
        same = torch.equal(outputs["cliplab"], outputs["openai"])
        print(
            f"run {run + 1}: cliplab {len(texts) / runs['cliplab']['wall'][-1]:,.0f} texts/s, "
            f"OpenAI {len(texts) / runs['openai']['wall'][-1]:,.0f} texts/s, "
            f"identical output: {same}"
        )
        if not same:
            raise SystemExit("outputs differ: the benchmark is void")

    def rate(name: str, kind: str, pick=min) -> float:
        return len(texts) / pick(runs[name][kind])

    ratio = rate("cliplab", "wall") / rate("openai", "wall")
    cpu_ratio = rate("cliplab", "cpu") / rate("openai", "cpu")
    median_ratio = rate("cliplab", "wall", statistics.median) / rate(
        "openai", "wall", statistics.median
    )
    warm_ratio = rate("cliplab", "warm") / rate("openai", "warm")
    print(f"cliplab tokenize:     {rate('cliplab', 'wall'):9,.0f} texts/s (cold cache)")
    print(f"OpenAI clip.tokenize: {rate('openai', 'wall'):9,.0f} texts/s (cold cache)")
    print(
        f"speed-up: {ratio:.1f}x wall clock, {cpu_ratio:.1f}x CPU time (best of {args.repeats}); "
        f"{median_ratio:.1f}x wall clock on medians"
    )
    print(
        f"warm caches (same texts again): cliplab {rate('cliplab', 'warm'):,.0f} texts/s, "
        f"OpenAI {rate('openai', 'warm'):,.0f} texts/s, {warm_ratio:.1f}x"
    )
    print(
        f"tokenizer creation: cliplab {statistics.median(runs['cliplab']['init']) * 1e3:.0f} ms, "
        f"OpenAI {statistics.median(runs['openai']['init']) * 1e3:.0f} ms (not in the figures)"
    )

    peers = time_peers(refs, texts, outputs["openai"], args.repeats)
    for name, peer in peers.items():
        peer["cliplab_speedup"] = round(rate("cliplab", "wall") / peer["texts_per_s"], 2)
        print(f"cliplab vs {name}: {peer['cliplab_speedup']:.1f}x")

    report = {
        "benchmark": "tokenize(list_of_texts) -> LongTensor [N, 77], truncate=True, cold caches",
        "peers": peers,
        "workload": workload,
        "texts": len(texts),
        "repeats": args.repeats,
        "cliplab_texts_per_s": round(rate("cliplab", "wall"), 1),
        "openai_texts_per_s": round(rate("openai", "wall"), 1),
        "figures": f"best of {args.repeats} runs each (medians: speedup_median)",
        "speedup": round(ratio, 2),
        "speedup_cpu_time": round(cpu_ratio, 2),
        "speedup_median": round(median_ratio, 2),
        "warm_cliplab_texts_per_s": round(rate("cliplab", "warm"), 1),
        "warm_openai_texts_per_s": round(rate("openai", "warm"), 1),
        "seconds": {
            name: {kind: [round(x, 4) for x in values] for kind, values in kinds.items()}
            for name, kinds in runs.items()
        },
        "identical_output": True,
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "ftfy": ftfy.__version__,
            "load_average_1min_at_end": os.getloadavg()[0],
        },
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/bench_tokenizer.py " + " ".join(sys.argv[1:]),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
