"""The demo's plan: its recipe (a plain ``cliplab train`` config), the evaluation it runs, and
the data both need, installed and built from the builders' own declarations.

The recipe names its training data as ``kind = "shards"`` sources and its tracking set in
``[[eval.sets]]``; the evaluation suite names its sets. :func:`needed_outputs` collects them,
:func:`cliplab.recipes.builders.plan` turns them into builders and packages, and
:func:`prepare_data` installs and builds exactly those.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from cliplab.data.sources import ShardsSpec
from cliplab.evaluation.registry import get

Log = Callable[[str], None]

#: Zero-shot sets of the demo, and what each tests.
ZEROSHOT_SETS = {
    "emoji-google": "unseen drawing style",
    "tuxpaint-photos-emoji": "unseen domain (photos)",
    "fashion-mnist-test": "unseen task",
}
#: Zero-shot sets the demo adds when their sources install (Apple's and Facebook's emoji are
#: fetched on the user's machine and never redistributed): more unseen drawing styles.
OPTIONAL_ZEROSHOT_SETS = {
    "emoji-apple": "unseen drawing style",
    "emoji-facebook": "unseen drawing style",
}
PROBE_SET = "fashion-mnist-test"
RETRIEVAL_SET = "tuxpaint-photos"
#: What each retrieval set tests.
RETRIEVAL_TESTS = {RETRIEVAL_SET: "unseen domain, descriptions"}
#: The Figure 6 axis at our scale.
SHOTS = (1, 2, 4, 8, 16)


def suite(
    shots: Sequence[int] = SHOTS,
    seeds: int = 3,
    max_iter: int = 100,
    optional: Sequence[str] = (),
) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The demo's evaluation: ``(protocol, {input: set name}, options)`` per run, in order;
    ``optional``: the names of :data:`OPTIONAL_ZEROSHOT_SETS` that were built."""
    probe = {"max_iter": max_iter}
    extra = [name for name in OPTIONAL_ZEROSHOT_SETS if name in optional]
    return [
        *[("zeroshot", {"dataset": name}, {}) for name in [*ZEROSHOT_SETS, *extra]],
        ("linear-probe", {"dataset": PROBE_SET}, probe),
        ("fewshot", {"dataset": PROBE_SET}, {**probe, "shots": tuple(shots), "seeds": seeds}),
        ("retrieval", {"dataset": RETRIEVAL_SET}, {}),
    ]


#: The bundled recipes, by the name ``cliplab demo --recipe NAME`` takes.
RECIPES = {"english": "recipe.toml", "multilingual": "multilingual.toml"}


def recipe_path(recipe: str | os.PathLike[str] | None = None) -> Path:
    """A training recipe (a ``cliplab train`` config): a bundled one by name (``english``, the
    default, or ``multilingual``) or a TOML file's path."""
    name = str(recipe) if recipe is not None else "english"
    if name in RECIPES:
        return Path(str(resources.files("cliplab.demo") / RECIPES[name]))
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"no recipe {name!r}: not a bundled one ({', '.join(RECIPES)}) nor a TOML file"
        )
    return path


def training_config(
    recipe: str | os.PathLike[str] | None,
    data_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
    overrides: Sequence[str] = (),
) -> Any:
    """The recipe as a :class:`cliplab.train.Config` with its data directory and output."""
    import json

    from cliplab.train.config import load_config

    settings = [f"data.dir={json.dumps(str(data_dir))}", *overrides]
    settings.append(f"output={json.dumps(str(output))}")
    return load_config(recipe_path(recipe), settings)


def shard_sets(config: Any) -> list[str]:
    """The built shard sets a training config reads."""
    return [s.set for s in config.data.sources if isinstance(s, ShardsSpec)]


def evaluation_sets(config: Any, runs: Sequence[tuple[str, dict[str, Any], Any]]) -> list[str]:
    """The evaluation sets (by name) that ``runs`` and the config's ``[[eval.sets]]`` use."""
    names: list[str] = []
    tables = [(t["protocol"], t) for t in config.eval.sets]
    for protocol, inputs in [*((p, i) for p, i, _ in runs), *tables]:
        for i in get(protocol).inputs:
            values = inputs.get(i.name)
            for v in values if isinstance(values, list) else [values]:
                if isinstance(v, str) and "/" not in v and v not in names:
                    names.append(v)
    return names


def needed_outputs(config: Any, evalsets: Sequence[str]) -> list[str]:
    """Builder outputs (``shards/<name>``, ``eval/<name>``) a run needs."""
    return [*(f"shards/{s}" for s in shard_sets(config)), *(f"eval/{e}" for e in evalsets)]


def prepare_data(
    data_dir: Path,
    outputs: Sequence[str],
    log: Log = print,
    install: bool = True,
    optional: Sequence[str] = (),
) -> list[str]:
    """Install the packages ``outputs`` and ``optional`` need (skipped when present), then
    build them. A missing required output is an error; a missing optional one (Apple and
    Facebook emoji, which need their own packages) is left out. Returns what was built."""
    from cliplab.recipes import builders
    from cliplab.recipes import install as installer

    everything = [*outputs, *(o for o in optional if o not in outputs)]
    wanted, packages = builders.plan(everything)
    if install:
        _, required = builders.plan(outputs)
        log(f"== sources -> {data_dir / 'sources'}")
        results = installer.install(packages, data_dir / "sources", log=log)
        failed = {k: v["error"] for k, v in results.items() if "error" in v and k in required}
        if failed:
            raise RuntimeError(
                "could not install "
                + "; ".join(f"{k}: {v}" for k, v in failed.items())
                + " (the demo needs the package registries: npm and Debian's apt)"
            )
    log(f"== shards and evaluation sets -> {data_dir}")
    builders.build(list(wanted), data_dir / "sources", data_dir, log=log, only=everything)
    built = [o for o in everything if (data_dir / o / builders.BUILD_FILE).is_file()]
    missing = [o for o in outputs if o not in built]
    if missing:
        raise RuntimeError(
            f"could not build {', '.join(missing)} (are their sources installed? "
            "`cliplab data install`)"
        )
    for o in optional:
        if o not in built:
            log(f"   {o} not built (its source is not installed): left out")
    return built
