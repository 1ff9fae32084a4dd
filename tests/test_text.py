"""Text processing: BERT WordPiece offline, word vocabularies, POS tagging and noun phrases."""
import pytest

from tbpr import synthpedes as synthetic
from tbpr.data import text
from tbpr.data.text import Vocabulary, noun_phrases, phrase_f1, word_tokenize

# Hand-written CUHK-PEDES-style captions and the noun phrases a reader marks (MIA's NP rule).
REAL_STYLE = [
    ("The man is wearing a black jacket, a pair of blue jeans and white sneakers. He is carrying "
     "a brown backpack.",
     ["The man", "a black jacket", "a pair", "blue jeans", "white sneakers", "a brown backpack"]),
    ("A woman with long black hair wears a white short-sleeved shirt and a knee-length grey skirt.",
     ["A woman", "long black hair", "a white short-sleeved shirt", "a knee-length grey skirt"]),
    ("This young lady has her hair in a ponytail and is dressed in a pink sweater, black leggings "
     "and black and white shoes.",
     ["This young lady", "her hair", "a ponytail", "a pink sweater", "black leggings",
      "black and white shoes"]),
    ("The girl is walking along the street holding an umbrella in her left hand.",
     ["The girl", "the street", "an umbrella", "her left hand"]),
    ("An older man in a navy blue coat and khaki pants is looking at his phone.",
     ["An older man", "a navy blue coat", "khaki pants", "his phone"]),
    ("She carries a red handbag over her shoulder and wears dark sunglasses.",
     ["a red handbag", "her shoulder", "dark sunglasses"]),
    ("A man wearing a grey hoodie with a white logo on the front, dark slacks and brown boots.",
     ["A man", "a grey hoodie", "a white logo", "the front", "dark slacks", "brown boots"]),
    ("The person has short curly hair and is carrying a black shoulder bag across his body.",
     ["The person", "short curly hair", "a black shoulder bag", "his body"]),
    ("A lady in a yellow short sleeve shirt holding a small pamphlet.",
     ["A lady", "a yellow short sleeve shirt", "a small pamphlet"]),
    # words outside the lexicon (written after the tagger, to keep the score honest)
    ("A gentleman in a maroon windbreaker and grey sweatpants is jogging past a parked van.",
     ["A gentleman", "a maroon windbreaker", "grey sweatpants", "a parked van"]),
    ("Woman wearing a sleeveless floral top, denim shorts, and flip flops, with a tote bag hanging "
     "from her arm.",
     ["Woman", "a sleeveless floral top", "denim shorts", "flip flops", "a tote bag", "her arm"]),
]


def _spans(caption, phrases):
    spans, start = [], 0
    for p in phrases:
        a = caption.index(p, start)
        spans.append((a, a + len(p)))
        start = a + len(p)
    return spans


@pytest.fixture(scope="module")
def gold(smoke_root):
    return list(synthetic.load_ground_truth(smoke_root).captions.values())


def test_offline_tokenizer_is_bert_base_uncased_wordpiece():
    tok = text.bert_tokenizer()
    assert len(tok) == 30522
    assert tok("A Red jacket")["input_ids"] == [101, 1037, 2417, 6598, 102]  # BERT's own ids
    assert text.bert_tokenizer() is tok


def test_missing_tokenizer_names_the_fix(tmp_path):
    with pytest.raises(OSError, match="vocab.txt"):
        text.bert_tokenizer(str(tmp_path / "nowhere"))


def test_word_tokenize_lowercases_and_drops_punctuation():
    assert word_tokenize("A man's RED t-shirt, 2 bags.") == ["a", "mans", "red", "t", "shirt",
                                                             "2", "bags"]


def test_vocabulary_keeps_words_seen_twice_and_drops_unknown_words():
    vocab = Vocabulary.build(["a red coat", "a blue coat", "A red hat"], min_count=2)
    assert vocab.itos == ["<pad>", "<unk>", "a", "coat", "red"]  # by frequency, then alphabet
    assert vocab.encode("a green coat") == [2, 3]
    assert vocab.encode("green hat") == [Vocabulary.UNK]  # never empty
    assert vocab.encode("a a a a", max_len=2) == [2, 2]
    token = Vocabulary.build(["a red coat", "a red coat"], unknown="token")
    assert token.encode("a green coat") == [2, 1, 3]
    again = Vocabulary.from_json(vocab.to_json())
    assert again.itos == vocab.itos and len(again) == 5


def test_grammar_over_gold_tags_reproduces_gold_phrases_exactly(gold):
    predicted = []
    for cap in gold:
        tagged = [(a, b, w, g) for (a, b, w, _), g in zip(text.tag(cap.text, "lexicon"), cap.pos)]
        assert [w for _, _, w, _ in tagged] == cap.tokens
        predicted.append(text.chunk(cap.text, tagged=tagged))
    assert phrase_f1(predicted, [c.noun_phrases for c in gold]) == (1.0, 1.0, 1.0)


def test_offline_tagger_finds_synthpedes_gold_phrases(gold):
    predicted = [noun_phrases(c.text, tagger="lexicon") for c in gold]
    _, _, f1 = phrase_f1(predicted, [c.noun_phrases for c in gold])
    tags = [t for c in gold for _, _, _, t in text.tag(c.text, "lexicon")]
    accuracy = sum(t == g for t, g in zip(tags, [g for c in gold for g in c.pos])) / len(tags)
    print(f"SynthPedes smoke: tag accuracy {accuracy:.3f}, phrase F1 {f1:.3f}")
    assert accuracy > .97 and f1 > .95  # only rare typos are mistagged


def test_offline_tagger_on_real_style_captions():
    predicted = [noun_phrases(c, tagger="lexicon") for c, _ in REAL_STYLE]
    _, _, f1 = phrase_f1(predicted, [_spans(c, p) for c, p in REAL_STYLE])
    print(f"real-style captions: phrase F1 {f1:.3f}")
    assert f1 > .85


def test_mia_examples_and_no_verb_phrases():
    found = [p for _, _, p in noun_phrases("wearing black pants and black and white shoes with "
                                           "a red jacket", tagger="lexicon")]
    assert found == ["black pants", "black and white shoes", "a red jacket"]


def test_pos_tag_uses_nltk_when_its_data_is_installed(monkeypatch):
    import nltk
    monkeypatch.setattr(text, "nltk_tagger_available", lambda: True)
    monkeypatch.setattr(nltk, "pos_tag", lambda words: [(w, "XX") for w in words])
    assert text.pos_tag(["a", "coat"]) == ["XX", "XX"]
    assert text.pos_tag(["a", "coat"], tagger="lexicon") == ["DT", "NN"]


def test_unknown_words_fall_back_to_suffix_rules():
    assert text.lexicon_tag(["strolling", "zipped", "quickly", "mittens", "gizmo", "3", ","]) == \
        ["VBG", "VBN", "RB", "NNS", "NN", "CD", ","]


def test_phrase_f1_counts_exact_span_matches():
    assert phrase_f1([[(0, 3), (4, 9)]], [[(0, 3), (5, 9)]]) == (.5, .5, .5)
    assert phrase_f1([[]], [[(0, 1)]]) == (0.0, 0.0, 0.0)
