"""WIT-style curation (``cliplab data curate``): keep the image-text pairs whose text names a
query, at most ``cap`` pairs per query, as the paper built its 400M-pair WebImageText set
(Radford et al. 2021, section 2.2, and the YFCC100M filtering it recalls).

One module per step:

1. :mod:`~cliplab.data.curate.queries`: the query list (frequent words, high-PMI bigrams of
   the candidate texts, WordNet lemmas);
2. :mod:`~cliplab.data.curate.filters`: texts without content (file names, placeholders)
   and non-English texts are dropped, each with a reason;
3. :mod:`~cliplab.data.curate.matching`: a text matches the queries it contains as whole
   words (``no-query`` when none);
4. :mod:`~cliplab.data.curate.pipeline`: the cap, applied in input order over texts checked
   in worker processes; inputs streamed through the data layer's readers
   (:mod:`~cliplab.data.curate.inputs`) in bounded memory;
5. :mod:`~cliplab.data.curate.report`: what was kept and dropped, and why.
"""

from cliplab.data.curate.filters import REASONS, EnglishFilter, junk_reason, normalize, tokenize
from cliplab.data.curate.inputs import Record, read_records
from cliplab.data.curate.matching import QueryMatcher, TextChecker
from cliplab.data.curate.pipeline import CurateConfig, curate, prepare
from cliplab.data.curate.queries import (
    QueryList,
    build_query_list,
    pmi_bigrams,
    wordfreq_words,
    wordnet_lemmas,
)

__all__ = [
    "REASONS",
    "CurateConfig",
    "EnglishFilter",
    "QueryList",
    "QueryMatcher",
    "Record",
    "TextChecker",
    "build_query_list",
    "curate",
    "junk_reason",
    "normalize",
    "pmi_bigrams",
    "prepare",
    "read_records",
    "tokenize",
    "wordfreq_words",
    "wordnet_lemmas",
]
