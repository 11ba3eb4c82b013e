"""ptb_tokenize gives the tokens of pycocoevalcap's Java PTBTokenizer (Stanford CoreNLP 3.4.1, the jar that
pycocoevalcap 1.2 ships, run as `-preserveLines -lowerCase`, then pycocoevalcap's punctuation filter).

Every expected token list in PTB_CASES was printed by that jar (via `PTBTokenizer().tokenize` on a set holding only
that caption) on 2026-12-01; the test against Java re-checks them and a larger random set wherever java runs.
"""

from __future__ import annotations

import random
import unicodedata

import pytest

from tests.java_tokenizer import can_run_java_tokenizer, java_tokens
from vlmlab.eval.ptb_tokenizer import ptb_tokenize, ptb_tokenize_lines

NBSP = "\u00a0"
PTB_CASES = [
    # -- caption-like English
    ("A man isn't riding a horse.", ["a", "man", "is", "n't", "riding", "a", "horse"]),
    (
        "The man's dog can't swim, they're sad.",
        ["the", "man", "'s", "dog", "ca", "n't", "swim", "they", "'re", "sad"],
    ),
    (
        "I'm sure we'll see what you've done; he'd agree.",
        ["i", "'m", "sure", "we", "'ll", "see", "what", "you", "'ve", "done", "he", "'d", "agree"],
    ),
    ("A dog won't eat.", ["a", "dog", "wo", "n't", "eat"]),
    ("the DON'T and CAN'T", ["the", "do", "n't", "and", "ca", "n't"]),
    ("The dogs' toys", ["the", "dogs", "toys"]),
    ('A sign that says "STOP".', ["a", "sign", "that", "says", "stop"]),
    ("\u2018Curly\u2019 \u201cquotes\u201d and 'straight' ones", ["curly", "quotes", "and", "straight", "ones"]),
    ("A well-known 3.5 inch screen at 10:30.", ["a", "well-known", "3.5", "inch", "screen", "at", "10:30"]),
    (
        "Two T-shirts, a 3-year-old and 1,000 balloons!",
        ["two", "t-shirts", "a", "3-year-old", "and", "1,000", "balloons"],
    ),
    ("Mr. Smith visits St. Louis, U.S. etc.", ["mr.", "smith", "visits", "st.", "louis", "u.s.", "etc."]),
    ("Plan B.", ["plan", "b."]),  # a one-letter abbreviation keeps its period too...
    ("I. The end", ["i", "the", "end"]),  # ...unless a sentence starts after it
    ("I. the end", ["i.", "the", "end"]),
    ("Ph.D. a.k.a. vs. cf.", ["ph.d.", "a.k.a.", "vs.", "cf."]),
    ("Wait... what?! -- no - yes", ["wait", "what", "?!", "no", "yes"]),  # "?!" is not on the removal list
    ("I'm gonna wanna go, cannot stay.", ["i", "'m", "gon", "na", "wan", "na", "go", "can", "not", "stay"]),
    ("black/white and/or 50% $5 #1", ["black/white", "and/or", "50", "%", "$", "5", "#", "1"]),
    ("It costs £5 or €10 \u2013 about ½ price…", ["it", "costs", "#", "5", "or", "$", "10", "about", "1/2", "price"]),
    ("It's 2½ feet", ["it", "'s", "2", "1/2", "feet"]),
    ("a\u2014b and c\u2013d", ["a", "b", "and", "c", "d"]),
    ("A MAN On A BiKe", ["a", "man", "on", "a", "bike"]),
    ("colour grey centre", ["colour", "grey", "centre"]),  # no Americanisation
    ("", []),
    # -- brackets: PTB names them -LRB- ...; lower-cased, they escape pycocoevalcap's removal list and stay
    (
        "A cat (black) on a [red] mat.",
        ["a", "cat", "-lrb-", "black", "-rrb-", "on", "a", "-lsb-", "red", "-rsb-", "mat"],
    ),
    ("{braces}", ["-lcb-", "braces", "-rcb-"]),
    (
        "a <b> tag and x<y and a> b and <html>",
        ["a", "<b>", "tag", "and", "x", f"<y{NBSP}and{NBSP}a>", "b", "and", "<html>"],
    ),
    ("call 555-1234 or (555) 123-4567", ["call", "555-1234", "or", f"-lrb-555-rrb-{NBSP}123-4567"]),
    (":) :-( ;D", [":-rrb-", ":--lrb-", "d"]),
    # -- letters outside ASCII stay inside their words; CJK runs are one token
    (
        "The café on the Champs-Élysées serves crème brûlée.",
        ["the", "café", "on", "the", "champs-élysées", "serves", "crème", "brûlée"],
    ),
    ("Ünïcödé Straße, naïve résumé and façade", ["ünïcödé", "straße", "naïve", "résumé", "and", "façade"]),
    ("Ελληνικά γράμματα και λέξεις", ["ελληνικά", "γράμματα", "και", "λέξεις"]),
    ("Русский текст: кошка на диване", ["русский", "текст", "кошка", "на", "диване"]),
    ("日本語のテキスト 中文字符 한국어", ["日本語のテキスト", "中文字符", "한국어"]),
    ("\u02bbOkina and \u014b", ["\u02bbokina", "and", "\u014b"]),
    ("a dog \U0001f600 with a hat", ["a", "dog", "with", "a", "hat"]),  # outside the BMP: untokenizable, deleted
    # -- e-mail, URLs, hashtags, handles, files, clitics
    (
        "Mail john.doe@example.com or <info@cafe.fr> now",
        ["mail", "john.doe@example.com", "or", "<info@cafe.fr>", "now"],
    ),
    (
        "See http://www.example.com/path?x=1, www.foo.org and bar.net/baz.",
        ["see", "http://www.example.com/path?x=1", "www.foo.org", "and", "bar.net/baz"],
    ),
    ("#sunset at the beach with @john_doe #2", ["#sunset", "at", "the", "beach", "with", "@john_doe", "#", "2"]),
    ("report.pdf and x.py files", ["report.pdf", "and", "x.py", "files"]),
    ("C++ and F# code", ["c++", "and", "f#", "code"]),
    ("AT&T and S&P-500", ["at&t", "and", "s&p-500"]),
    ("'Tis the season, 'twas the night", ["'t", "is", "the", "season", "'t", "was", "the", "night"]),
    ("'TIS true", ["'t", "is", "true"]),
    ("he's 5'10\" tall", ["he", "'s", "5", "10", "tall"]),
    ("rock'n'roll O'Reilly y'all d'Artagnan", ["rock", "'n'", "roll", "o'reilly", "y'", "all", "d'artagnan"]),
    ("the '90s and the 1990s", ["the", "'90s", "and", "the", "1990s"]),
    ("the woman we'll", ["the", "woman", "we", "ll"]),  # at the very end, "'ll" is an opening quote and "ll"
]


@pytest.mark.parametrize(("text", "tokens"), PTB_CASES)
def test_ptb_tokenize(text: str, tokens: list[str]) -> None:
    assert ptb_tokenize(text) == tokens


def test_a_set_is_tokenised_as_one_text() -> None:
    # pycocoevalcap tokenises a set's captions in one call: a rule may look at the next caption
    assert ptb_tokenize_lines(["Plan B.", "The end"]) == [["plan", "b"], ["the", "end"]]
    assert ptb_tokenize_lines(["Plan B.", "the end"]) == [["plan", "b."], ["the", "end"]]
    assert ptb_tokenize_lines(["a line\nbreak", "", "x"]) == [["a", "line", "break"], [], ["x"]]


CAPTION_PIECES = (
    "A man woman dog cat's people children's sitting on the bench, next to a red car. Two 2 3.5 10:30 1,000 "
    "well-known T-shirt black/white isn't can't won't don't they're it's we'll I'm you've he'd o'clock \"STOP\" "
    "(left) [sign] & % $5 w/ U.S. Mr. St. etc. -- - ; : ! ? ... 's' 'quoted' 50% #1 NYC NY. 3-year-old 1/2 It's "
    "café Straße naïve Ελληνικά кошка 日本語 한국어 john.doe@example.com http://a.org/x?y=1 www.foo.org bar.com "
    "#tag @user_1 'Tis 'twas cannot gonna <b> </b> x<y a> << >> :) ;-( ^_^ £5 €3 ½ … – — “ ” ‘ ’ ° × → ★ "
    "Dunkin' 'em 'cause y'all O'Reilly '90s 555-1234 (555) AT&T S&P-500 C++ F# report.pdf Ph.D. a.k.a. I. A. The"
).split()


def random_captions(count: int, seed: int = 0) -> list[str]:
    """Caption-like strings mixing the cases PTB treats specially, some ending in a full stop."""
    rng = random.Random(seed)
    captions = [" ".join(rng.choice(CAPTION_PIECES) for _ in range(rng.randint(3, 14))) for _ in range(count)]
    return [caption + "." if rng.random() < 0.5 else caption for caption in captions]


def random_text(count: int, seed: int = 0) -> list[str]:
    """Lines of pieces glued with and without spaces, and random characters of the Basic Multilingual Plane whose
    Unicode category has not changed since Unicode 3.2 (the Java tokenizer's tables are from 2014). Line breaks
    other than \\n are left out: pycocoevalcap keeps them inside a caption, where Java breaks the line."""
    rng = random.Random(seed)

    def character() -> str:
        while True:
            char = chr(rng.choice([rng.randint(32, 126), rng.randint(0xA0, 0x2FFF), rng.randint(0x3000, 0xD7FF)]))
            category = unicodedata.ucd_3_2_0.category(char)
            if char not in "\u2028\u2029" and category != "Cn" and category == unicodedata.category(char):
                return char

    def part() -> str:
        roll = rng.random()
        if roll < 0.7:
            return rng.choice(CAPTION_PIECES)
        if roll < 0.85:
            return rng.choice(CAPTION_PIECES) + rng.choice(CAPTION_PIECES)
        return "".join(character() for _ in range(rng.randint(1, 4)))

    return [rng.choice([" ", " ", "", "  "]).join(part() for _ in range(rng.randint(0, 12))) for _ in range(count)]


@pytest.mark.skipif(not can_run_java_tokenizer(), reason="needs java (and a writable pycocoevalcap directory)")
def test_ptb_tokenize_equals_the_java_tokenizer() -> None:
    for text, tokens in PTB_CASES:  # each alone, as the expected values were made
        assert java_tokens([text]) == [tokens], text
    lines = [text for text, _ in PTB_CASES] + random_captions(500) + random_text(1500)
    for line, ours, theirs in zip(lines, ptb_tokenize_lines(lines), java_tokens(lines)):
        assert ours == theirs, repr(line)
