"""Search a collection with CLIP: embed it (:mod:`~cliplab.search.embed`), keep it on disk
(:mod:`~cliplab.search.collection`), index it with FAISS (:mod:`~cliplab.search.index`) and
query it with words or images (:mod:`~cliplab.search.query`). The web app on top is the
application :mod:`cliplab.serve`."""
