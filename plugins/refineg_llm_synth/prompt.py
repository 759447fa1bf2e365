"""The synthesis prompt: type descriptions, the seed as JSON, and what to write.

Domain-aware synthesis puts the LLM's knowledge into *training data* written
in the domain's annotation conventions, so the prompt spells those
conventions out (type descriptions, "never tag generic nouns") and shows the
seed exactly in the output schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from refineg_core.types import Sample

GENERIC_NOUN_RULE = (
    "Never tag generic nouns such as gun, air base, soldier: only specific, named "
    "entities (a model, class, proper name or designation) are entities."
)


def seed_json(seed: Sample) -> str:
    """The seed in the output schema; names as they appear in the text, duplicates once."""
    seen: set[tuple[str, str]] = set()
    ents = []
    for e in seed.entities:
        pair = (e.text or seed.span_text(e.start, e.end), e.type)
        if pair not in seen:
            seen.add(pair)
            ents.append({"name": pair[0], "type": pair[1]})
    return json.dumps({"text": seed.text, "entity": ents}, ensure_ascii=False)


def build_prompt(
    seed: Sample,
    descriptions: Mapping[str, str],
    *,
    n_rewrites: int,
    n_new: int,
    new_for_empty_seeds: bool,
) -> tuple[str, str]:
    """(system, user) texts for one seed.

    A seed without entities asks for entity-less rewrites (and, only when
    ``new_for_empty_seeds``, new sentences with entities of any type): asking
    for "new entities of the same types" would be meaningless, and an untagged
    name in a rewrite would teach the tagger to miss it.
    """
    types = "\n".join(f"- {t}: {d}" for t, d in descriptions.items())
    system = (
        "You write training data for named entity recognition in one domain.\n"
        f"Entity types:\n{types}\n"
        f"{GENERIC_NOUN_RULE}\n"
        'Answer with a JSON list only, each item {"text": "...", "entity": '
        '[{"name": "...", "type": "..."}]}. Every name must be copied exactly as it '
        "appears in its text, and every type must be one of: " + ", ".join(descriptions) + "."
    )
    has_entities = bool(seed.entities)
    tasks = []
    if has_entities:
        tasks.append(
            f"(a) {n_rewrites} new sentences of the same domain that reuse the seed's entities "
            "unchanged (same names, same types) in new contexts;"
        )
        if n_new:
            tasks.append(
                f"(b) {n_new} sentences with newly invented, specific entities of the same types "
                "as the seed's entities, in the same style."
            )
    else:
        tasks.append(
            f"(a) {n_rewrites} new sentences of the same domain and style that, like the seed, "
            "mention no specific named entity at all; give each an empty entity list;"
        )
        if n_new and new_for_empty_seeds:
            tasks.append(
                f"(b) {n_new} sentences of the same topic that mention specific entities of the "
                "types above, each tagged."
            )
    # The seed comes last and the answer cue after it: small models continue
    # from the end of the prompt (put first, they echoed the instructions).
    user = (
        "Write:\n"
        + "\n".join(tasks)
        + "\nReturn one JSON list with all sentences, in the same schema as the seed sample. "
        "Answer with the JSON list only, without repeating these instructions."
        f"\n\nSeed sample:\n{seed_json(seed)}\n\nAnswer (JSON list):"
    )
    return system, user
