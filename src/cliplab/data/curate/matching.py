"""Matching texts to queries: whole words, linear in the text whatever the number of queries
(Aho-Corasick with ``pyahocorasick`` when installed, else an equivalent n-gram hash lookup;
never a loop over the queries), and the per-text check that runs in the worker processes."""

from __future__ import annotations

from collections.abc import Sequence

from cliplab.data.curate.filters import EnglishFilter, junk_reason, tokenize

__all__ = ["QueryMatcher", "TextChecker"]


class QueryMatcher:
    """All queries a text contains as whole words, as query indices (sorted, unique).

    With pyahocorasick: one automaton over ``" q "`` keys run on ``" " + tokens + " "``.
    Without: every token n-gram up to the longest query looked up in a dict; both are linear
    in the text (times the longest query's length), whatever the number of queries.
    """

    def __init__(self, queries: Sequence[str], use_automaton: bool | None = None) -> None:
        self.queries = list(queries)
        self.longest = max((q.count(" ") + 1 for q in self.queries), default=0)
        try:
            import ahocorasick
        except ImportError:
            ahocorasick = None
        if use_automaton and ahocorasick is None:
            raise ImportError("pyahocorasick is not installed: pip install 'cliplab[curate]'")
        self.automaton = None
        if ahocorasick is not None and use_automaton is not False:
            automaton = ahocorasick.Automaton()
            for i, q in enumerate(self.queries):
                automaton.add_word(f" {q} ", i)
            if len(automaton):
                automaton.make_automaton()
                self.automaton = automaton
        self.index = (
            None if self.automaton is not None else {q: i for i, q in enumerate(self.queries)}
        )

    def __call__(self, tokens: Sequence[str]) -> list[int]:
        if not tokens or not self.queries:
            return []
        if self.automaton is not None:
            return sorted({i for _, i in self.automaton.iter(" " + " ".join(tokens) + " ")})
        assert self.index is not None
        found = set()
        for n in range(1, min(self.longest, len(tokens)) + 1):
            for i in range(len(tokens) - n + 1):
                j = self.index.get(" ".join(tokens[i : i + n]))
                if j is not None:
                    found.add(j)
        return sorted(found)


class TextChecker:
    """One text -> ``(reason, [])`` when dropped before the cap, else ``(None, query ids)``."""

    def __init__(self, matcher: QueryMatcher, english: EnglishFilter | None) -> None:
        self.matcher = matcher
        self.english = english

    def __call__(self, text: str) -> tuple[str | None, list[int]]:
        tokens = tokenize(text)
        reason = junk_reason(text, tokens)
        if reason is not None:
            return reason, []
        if self.english is not None and not self.english(text, tokens):
            return "non-english", []
        found = self.matcher(tokens)
        if not found:
            return "no-query", []
        return None, found
