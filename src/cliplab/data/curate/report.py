"""What a curation run reports: ``report.json`` (counts, drops by reason with examples, the
cap's effects, the most used queries) and its Markdown view ``report.md``."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import Any

from cliplab.data.curate.filters import REASONS
from cliplab.data.curate.queries import QueryList

__all__ = ["curation_report", "report_markdown"]


def curation_report(
    queries: QueryList,
    kept_per_query: list[int],
    cap_drops: Counter[int],
    reasons: Counter[str],
    examples: dict[str, list[str]],
    total: int,
    kept: int,
    seconds: float,
    workers: int,
    config: Any,  # the run's CurateConfig (a dataclass)
    info: dict[str, Any],
    shards: dict[str, Any] | None,
) -> dict[str, Any]:
    hit = [(queries.queries[i], n) for i, n in enumerate(kept_per_query) if n]
    hit.sort(key=lambda x: (-x[1], x[0]))
    at_cap = [q for q, n in hit if n >= config.cap]
    return {
        "texts": total,
        "kept": kept,
        "kept_fraction": kept / total if total else 0.0,
        # the recipe's reasons in order, then bad input records by the data layer's reasons
        "dropped": {r: reasons.get(r, 0) for r in REASONS}
        | {r: n for r, n in sorted(reasons.items()) if r not in REASONS},
        "drop_examples": examples,
        "seconds": round(seconds, 2),
        "texts_per_second": round(total / seconds, 1) if seconds > 0 else 0.0,
        # after the first result: without the engine's start-up (Ray's workers)
        "steady_texts_per_second": info.get("steady_texts_per_second"),
        "startup_seconds": info.get("startup_seconds"),
        "workers": workers,
        "queries": info.get("queries", {}),
        "queries_hit": len(hit),
        "queries_at_cap": len(at_cap),
        "cap": config.cap,
        "select": getattr(config, "select", "cap"),
        "engine": getattr(config, "engine", "local"),
        "cap_effects": {
            "dropped_by_cap": reasons.get("cap", 0),
            "queries_at_cap": at_cap[:50],
            "most_capped": [(queries.queries[i], n) for i, n in cap_drops.most_common(20)],
        },
        "top_queries": hit[:30],
        "bigram_examples": info.get("bigram_examples", []),
        "shards": {k: v for k, v in shards.items() if k != "shards"}
        | {"count": len(shards["shards"])}
        if shards
        else None,
        "config": {k: v for k, v in asdict(config).items() if k != "english_vocab"},
        "prepare_seconds": info.get("prepare_seconds"),
    }


def report_markdown(r: dict[str, Any]) -> str:
    lines = [
        "# Curation report",
        "",
        f"- texts: {r['texts']:,}; kept: {r['kept']:,} ({r['kept_fraction']:.1%})",
        f"- speed: {r['texts_per_second']:,.0f} texts/s with {r['workers']} worker(s) ({r.get('engine', 'local')} engine), {r['seconds']} s (query list prepared in {r['prepare_seconds']} s)",
        f"- selection: {'MetaCLIP balancing, t' if r.get('select') == 'balance' else 'hard cap'} = {r['cap']:,}",
        f"- queries: {r['queries']}; hit: {r['queries_hit']:,}; at the cap of {r['cap']:,}: {r['queries_at_cap']:,}",
        "",
        "## Drops by reason",
        "",
        "| reason | texts | examples |",
        "|---|---:|---|",
    ]
    for reason, n in r["dropped"].items():
        ex = "; ".join(f"`{e[:60]}`" for e in r["drop_examples"].get(reason, [])[:3]).replace(
            "|", "\\|"
        )
        lines.append(f"| {reason} | {n:,} | {ex} |")
    lines += [
        "",
        "## Cap effects",
        "",
        f"{r['cap_effects']['dropped_by_cap']:,} texts dropped because all their queries were full.",
    ]
    if r["cap_effects"]["most_capped"]:
        lines.append(
            "Most capped queries: "
            + ", ".join(f"{q} ({n:,})" for q, n in r["cap_effects"]["most_capped"][:10])
        )
    lines += ["", "## Top queries (kept pairs)", ""]
    lines.append(", ".join(f"{q} ({n:,})" for q, n in r["top_queries"][:30]) or "(none)")
    if r["bigram_examples"]:
        lines += [
            "",
            "## High-PMI bigrams (sample)",
            "",
            ", ".join(f"{b} ({p:.1f})" for b, p, _ in r["bigram_examples"][:20]),
        ]
    return "\n".join(lines) + "\n"
