"""Data: the SynthPedes benchmark, readers for the real datasets, text processing and loaders.

- ``synthetic``: render SynthPedes (``ensure``), its ground truth (``load_ground_truth``).
- ``formats``: ``load(name, root)`` for synthpedes / cuhk-pedes / icfg-pedes / rstpreid.
- ``text``: WordPiece tokenizer, word vocabularies, POS tags and noun phrases.
- ``datasets`` / ``transforms``: training loader (random or P×K), evaluation sets, augmentations.
"""
