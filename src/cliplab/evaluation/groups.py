"""Coarser classification tasks from fine-grained sets: classes regrouped by a field of their
``class_info`` (an emoji's category or subcategory), pooled across several sets.

Why: the paper's zero-shot vs few-shot comparison (Figure 6) needs a task whose class names
lie in the training text and with enough test images per class to draw 1-16 shots. Emoji
concepts have about one image per style, but their groups ("animal mammal", "food & drink")
have hundreds across the held-out styles, and the demo's captions name them.

    test = regroup([google, apple, facebook], "subcategory", min_images=60)
    validation = regroup([emoji_one], "subcategory", classes=test.classnames, info=info)
    chosen, _ = choose_zero_shot(store, zero_shot_candidates(validation))
    test = zero_shot_candidates(test)[chosen]

Each group also lists its members (the concept names of the taxonomy in it) as
``class_members``: zero-shot may score a group by its best member ("cat face" for "animals &
nature"), a set-up chosen, like the prompts, on validation data.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from cliplab.data.evalsets import ClassificationSet

#: Candidate prompt sets for emoji-group zero-shot, chosen between on a validation style only.
EMOJI_GROUP_TEMPLATES: dict[str, list[str]] = {
    "bare": ["{}"],
    "emoji": ["{} emoji"],
    "caption-like": ["an emoji, {}", "emoji - {}", "{} icon"],
    "ensemble": ["{}", "{} emoji", "an emoji, {}", "emoji - {}", "{} icon", "an emoji of {}"],
}
#: Groups never used as classes: emojibase's "Component" (skin tones, hair styles).
EXCLUDED_GROUPS = frozenset({"component"})


def group_name(value: str) -> str:
    """A group as the demo's captions say it: "Animals & Nature" -> "animals & nature",
    "animal-mammal" -> "animal mammal"."""
    return str(value).lower().replace("-", " ").strip()


def class_info_by_name(sets: Iterable[ClassificationSet]) -> dict[str, Mapping[str, Any]]:
    """Class name -> its ``class_info`` entry, from every set that has them (later sets win):
    lends groups to a set without ``class_info`` whose classes share the names."""
    out: dict[str, Mapping[str, Any]] = {}
    for ds in sets:
        if ds.class_info is not None:
            out.update(zip(ds.classnames, ds.class_info, strict=True))
    return out


def regroup(
    sets: Sequence[ClassificationSet],
    field: str,
    *,
    info: Mapping[str, Mapping[str, Any]] | None = None,
    classes: Sequence[str] | None = None,
    min_images: int = 1,
    name: str | None = None,
    templates: Sequence[str] | None = None,
) -> ClassificationSet:
    """The images of ``sets`` labelled by their class's ``field`` (:func:`group_name`).

    ``info`` maps class names to their info (default: the sets' own ``class_info``); images
    of classes without it, or in :data:`EXCLUDED_GROUPS`, are left out. ``classes`` fixes the
    groups and their order (a validation set scored like a test set); otherwise the groups with
    at least ``min_images`` images, sorted. ``class_members`` lists every name ``info`` puts in
    each group (the same lists for any set regrouped with the same ``info``). Raises
    ``ValueError`` when no group is left.
    """
    info = class_info_by_name(sets) if info is None else info
    pairs: list[tuple[Any, str]] = []
    for ds in sets:
        for image, label in zip(ds.images, ds.labels, strict=True):
            entry = info.get(ds.classnames[label])
            value = entry.get(field) if entry else None
            if value:
                group = group_name(value)
                if group not in EXCLUDED_GROUPS:
                    pairs.append((image, group))
    if classes is None:
        counts = Counter(g for _, g in pairs)
        classes = sorted(g for g, n in counts.items() if n >= min_images)
    index = {g: i for i, g in enumerate(classes)}
    kept = [(image, index[g]) for image, g in pairs if g in index]
    label = name or f"{'+'.join(ds.name for ds in sets)} by {field}"
    if not kept:
        raise ValueError(f"{label}: no {field} group with {min_images} or more images")
    members: dict[str, list[str]] = {}
    for concept, entry in sorted(info.items()):
        if entry.get(field):
            members.setdefault(group_name(entry[field]), []).append(concept)
    return ClassificationSet(
        [i for i, _ in kept],
        [y for _, y in kept],
        list(classes),
        templates=templates,
        name=label,
        class_members=[members.get(g, []) for g in classes],
    )


def zero_shot_candidates(
    dataset: ClassificationSet, template_sets: Mapping[str, Sequence[str]] = EMOJI_GROUP_TEMPLATES
) -> dict[str, ClassificationSet]:
    """``dataset`` set up for zero-shot in each candidate way: every template set, with the
    group names alone ("bare") and, where the set has ``class_members``, scored by the best of
    the name and its members ("bare + members")."""
    out = {}
    for key, templates in template_sets.items():
        out[key] = replace(dataset, templates=list(templates), class_members=None)
    if dataset.class_members is not None:
        for key, templates in template_sets.items():
            out[f"{key} + members"] = replace(dataset, templates=list(templates))
    return out
