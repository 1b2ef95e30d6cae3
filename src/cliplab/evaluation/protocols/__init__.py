"""One module per evaluation protocol, each following :mod:`cliplab.evaluation.protocol`;
:mod:`cliplab.evaluation.registry` lists them."""
