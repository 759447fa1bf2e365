"""Which posts to label next, and a round trip through Label Studio.

``refineg select`` ranks an unlabeled pool by the gate's sample uncertainty;
``refineg labelstudio export|import`` turn the chosen posts into Label Studio
tasks (with the tagger's entities as pre-annotations) and the annotators'
export back into native JSONL that ``data.extra_train`` reads.
"""
