"""The tokens of the COCO caption toolkit's tokenizer, without Java.

pycocoevalcap tokenises captions with Stanford CoreNLP 3.4.1's `PTBTokenizer`, run as
`java -cp stanford-corenlp-3.4.1.jar edu.stanford.nlp.process.PTBTokenizer -preserveLines -lowerCase`
on all captions of a set joined by newlines, then drops a fixed list of punctuation tokens. This
module re-implements that lexer (CoreNLP's `PTBLexer.flex` at tag v3.4.1, with the options that
command line gives: newlines are tokens, brackets become -LRB- ..., quotes become `` and '', dashes
--, ellipses ..., "gonna" and "cannot" are split, no Americanisation, no escaping of / and *) with
the scanner's rules: at each position every rule is tried, the longest match wins (trailing context
included), the first rule wins a tie, and a few rules give back part of their match. Literal words
in the rules are matched in any case (the scanner is `%caseless`); character classes are not.

What still differs from the Java tokenizer:
- Character classes use this Python's Unicode tables (Java's `isLetter`/`isDigit` of 2014 knew
  fewer letters), and a character outside the Basic Multilingual Plane (emoji) is one character
  here but two UTF-16 halves there; both are deleted as untokenizable unless a rule that takes any
  character (URL, e-mail) swallows them, as in Java.
- pycocoevalcap replaces only "\\n" inside a caption; a caption holding another line break
  (\\r, U+0085, U+2028, U+2029, \\v, \\f) makes Java emit an extra line, which shifts every later
  caption of the set onto its neighbour's tokens. Here those characters are spaces.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from functools import cache, lru_cache

import regex

__all__ = ["PTB_REMOVED_TOKENS", "ptb_lex_lines", "ptb_tokenize", "ptb_tokenize_lines"]

# pycocoevalcap's filter, applied to the lower-cased tokens (its upper-case bracket names never match).
PTB_REMOVED_TOKENS = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
NEWLINE = "\n"  # the token a line break becomes (CoreNLP's *NL*)
_OTHER_LINE_BREAKS = str.maketrans({c: " " for c in "\r\x0b\x0c\x85\u2028\u2029"})


# --- character classes ------------------------------------------------------------------------------------------


def _class_of(predicate: Callable[[str], bool]) -> str:
    """The Basic Multilingual Plane characters that satisfy `predicate`, as the inside of a regex class."""
    ranges: list[tuple[int, int]] = []
    for code in range(0x10000):
        if 0xD800 <= code <= 0xDFFF or not predicate(chr(code)):
            continue
        if ranges and ranges[-1][1] == code - 1:
            ranges[-1] = (ranges[-1][0], code)
        else:
            ranges.append((code, code))
    return "".join(re.escape(chr(a)) if a == b else f"{re.escape(chr(a))}-{re.escape(chr(b))}" for a, b in ranges)


_JAVA_LETTER = _class_of(str.isalpha)  # Java's Character.isLetter: categories Lu Ll Lt Lm Lo, as str.isalpha
_JAVA_DIGIT = _class_of(str.isdecimal)  # Character.isDigit: category Nd
_JAVA_UPPER = _class_of(lambda c: unicodedata.category(c) == "Lu")
# Marks and letters the lexer adds to Java's letters (soft hyphen, combining marks, ...).
_EXTRA_LETTERS = (
    "\u00ad\u0237-\u024f\u02c2-\u02c5\u02d2-\u02df\u02e5-\u02ff\u0300-\u036f\u0370-\u037d\u0384\u0385\u03cf\u03f6"
    "\u03fc-\u03ff\u0483-\u0487\u04cf\u04f6-\u04ff\u0510-\u0525\u055a-\u055f\u0591-\u05bd\u05bf\u05c1\u05c2\u05c4"
    "\u05c5\u05c7\u0615-\u061a\u063b-\u063f\u064b-\u065e\u0670\u06d6-\u06ef\u06fa-\u06ff\u070f\u0711\u0730-\u074f"
    "\u0750-\u077f\u07a6-\u07b1\u07ca-\u07f5\u07fa\u0900-\u0903\u093c\u093e-\u094e\u0951-\u0955\u0962-\u0963"
    "\u0981-\u0983\u09bc-\u09c4\u09c7\u09c8\u09cb-\u09cd\u09d7\u09e2\u09e3\u0a01-\u0a03\u0a3c\u0a3e-\u0a4f"
    "\u0a81-\u0a83\u0abc-\u0acf\u0b82\u0bbe-\u0bc2\u0bc6-\u0bc8\u0bca-\u0bcd\u0c01-\u0c03\u0c3e-\u0c56\u0d3e-\u0d44"
    "\u0d46-\u0d48\u0e30-\u0e3a\u0e47-\u0e4e\u0eb1-\u0ebc\u0ec8-\u0ecd"
)
_MISC_SYMBOLS = (
    "+%&~\\^|\\\\\u00a6\u00a7\u00a8\u00a9\u00ac\u00ae\u00af\u00b0-\u00b3\u00b4-\u00ba\u00d7\u00f7\u0387\u05be\u05c0"
    "\u05c3\u05c6\u05f3\u05f4\u0600-\u0603\u0606-\u060a\u060c\u0614\u061b\u061e\u066a\u066d\u0703-\u070d\u07f6-\u07f8"
    "\u0964\u0965\u0e4f\u1fbd\u2016\u2017\u2020-\u2023\u2030-\u2038\u203b\u203e-\u2042\u2044\u207a-\u207f"
    "\u208a-\u208e\u2100-\u214f\u2190-\u21ff\u2200-\u2bff\u3012\u30fb\uff01-\uff0f\uff1a-\uff20\uff3b-\uff40"
    "\uff5b-\uff65"
)


def _caseless(pattern: str) -> str:
    """`pattern` with its literal ASCII letters matched in either case and its character classes left
    as they are: the JFlex scanner is `%caseless`, which applies to literals only."""
    out = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            out.append(pattern[i : i + 2])
            i += 2
        elif char == "[":
            end = i + 1
            while pattern[end] != "]":
                end += 2 if pattern[end] == "\\" else 1
            out.append(pattern[i : end + 1])
            i = end + 1
        elif pattern.startswith(("(?:", "(?="), i):
            out.append(pattern[i : i + 3])
            i += 3
        else:
            out.append(f"[{char.lower()}{char.upper()}]" if char.isascii() and char.isalpha() else char)
            i += 1
    return "".join(out)


# --- the lexer's named patterns (written as in the lexer: literals caseless, classes exact) ---------------------

L = f"[{_JAVA_LETTER}]"  # [:letter:]
D = f"[{_JAVA_DIGIT}\u07c0-\u07c9]"  # DIGIT
LD = f"(?:{L}|{D})"  # THING's [:letter:]|[:digit:] (without the lexer's extra letters)
LETTER = f"(?:[{_JAVA_LETTER}{_EXTRA_LETTERS}]|&[aeiouAEIOU](?:acute|grave|uml);)"
SPACE = "[ \t\u00a0\u2000-\u200a\u3000]"
LINE_BREAK = "(?:\r\n|[\r\n\u2028\u2029\x0b\x0c\x85])"
SPACENL = f"(?:{SPACE}|{LINE_BREAK})"
SGML = (
    "<(?:[!?][A-Za-z\\-][^>\r\n]*|[A-Za-z][A-Za-z0-9_:.\\-]*(?:[ ]+(?:[A-Za-z][A-Za-z0-9_:.\\-]*"
    "|[A-Za-z][A-Za-z0-9_:.\\-]*[ ]*=[ ]*(?:'[^']*'|\"[^\"]*\")))*[ ]*/?|/[A-Za-z][A-Za-z0-9_:.\\-]*)[ ]*>"
)
SENTEND = f"{SPACENL}(?:{SPACENL}|[{_JAVA_UPPER}]|{SGML})"
NUM = f"(?:{D}+|{D}*(?:[.:,\u00ad\u066b\u066c]{D}+)+)"
APOS = "(?:['\u0092\u2019]|&apos;)"
APOSETC = f"(?:{APOS}|[`\u0091\u2018\u201b])"
WORD = f"{LETTER}(?:{LETTER}|{D})*(?:[.!?]{LETTER}(?:{LETTER}|{D})*)*"
REDAUX = f"{APOS}(?:[msdMSD]|re|ve|ll)"
SWORD = "[A-Za-z\u00ad]*[A-MO-Za-mo-z]\u00ad*"
SREDAUX = f"n{APOSETC}t"
HYPHEN = "[\\-_\u058a\u2010\u2011]"
THING = f"(?:[dDoOlL]{APOSETC}{LD})?{LD}+(?:{HYPHEN}(?:[dDoOlL]{APOSETC}{LD})?{LD}+)*"
_ACRO_NAMES = "(?:canada|sino|korean|eu|japan|non)-u\\.s|u\\.s\\.-(?:u\\.k|u\\.s\\.s\\.r)"
ACRO = f"(?:[A-Za-z](?:\\.[A-Za-z])*|{_ACRO_NAMES})"
ACRO2 = f"(?:[A-Za-z](?:\\.[A-Za-z])+|{_ACRO_NAMES})"
ABBREV1 = (  # months, days, states, companies, ...: usually followed by a lower-case word
    "(?:jan|feb|mar|apr|jun|jul|aug|sep|sept|oct|nov|dec|mon|tue|tues|wed|thu|thurs|fri"
    "|ala|ariz|[A]z|[A]rk|calif|colo|conn|ct|dak|[D]el|fla|ga|[I]ll|ind|kans?|ky|[L]a|[M]ass|md|mich|minn|[M]iss"
    "|mo|mont|neb|nev|okla|[O]re|[P]a|penn|tenn|[T]ex|va|vt|[W]ash|wisc?|wyo"
    "|inc|cos?|corp|pp?t[ye]s?|ltd|plc|rt|bancorp|bhd|assn|univ|intl|sys|tel|est|ext|sq"
    "|jr|sr|bros|(?:ed|ph)\\.d|blvd|rd|esq|etc|al|seq|bldg)\\."
)
ABBREV4 = (  # titles and the like: usually followed by an upper-case word
    "(?:mr|mrs|ms|[M]iss|drs?|profs?|sens?|reps?|attys?|lt|col|gen|messrs|govs?|adm|rev|maj|sgt|cpl|pvt|capt|ste?"
    "|ave|pres|lieut|hon|brig|co?mdr|pfc|spc|supts?|det|mt|ft|adj|adv|asst|assoc|ens|insp|mlle|mme|msgr|sfc"
    f"|vs|alex|wm|jos|cie|a\\.k\\.a|cf|treas|ph|{ACRO}|invt|elec|natl|m[ft]g|dept)"
)
ACRONYM_FOLLOWERS = (  # words after which an acronym's full stop also ends the sentence
    "(?:[A]bout|[A]ccording|[A]dditionally|[A]fter|[A]n|[A]|[A]s|[A]t|[B]ut|[E]arlier|[H]e|[H]er|[H]ere|[H]owever"
    "|[I]f|[I]n|[I]t|[L]ast|[M]any|[M]ore|[M]r\\.|[M]s\\.|[N]ow|[O]nce|[O]ne|[O]ther|[O]ur|[S]he|[S]ince|[S]o"
    "|[S]ome|[S]uch|[T]hat|[T]he|[T]heir|[T]hen|[T]here|[T]hese|[T]hey|[T]his|[W]e|[W]hen|[W]hile|[W]hat|[Y]et"
    f"|[Y]ou|{SGML})"
)
APOWORD = (  # words with an apostrophe inside that stay whole
    f"(?:{APOS}n{APOS}?|[lLdDjJ]{APOS}|dunkin{APOS}|somethin{APOS}|ol{APOS}|{APOS}em|[A-HJ-XZn]{APOSETC}{L}{L}{L}*"
    f"|{APOS}[2-9]0s|{APOS}till?|{L}{L}*[aeiouyAEIOUY]{APOSETC}[aeiouA-Z]{L}*|{APOS}cause"
    f"|cont'd\\.?|'twas|nor'easter|c'mon|e'er|s'mores|ev'ry|li'l|nat'l|o{APOSETC}o)"
)
FULLURL = 'https?://[^ \t\n\f\r"<>|(){}]+[^ \t\n\f\r"<>|.!?(){},\\-]'
LIKELYURL = (
    '(?:(?:www\\.(?:[^ \t\n\f\r"<>|.!?(){},]+\\.)+[a-zA-Z]{2,4})'
    "|(?:(?:[^ \t\n\f\r\"`'<>|.!?(){},-_$]+\\.)+(?:com|net|org|edu)))"  # ,-_ is a range: no digits, capitals
    '(?:/[^ \t\n\f\r"<>|()]+[^ \t\n\f\r"<>|.!?(){},\\-])?'
)
EMAIL = (
    '(?:&lt;|<)?[a-zA-Z0-9][^ \t\n\f\r"<>|()\u00a0{}]*@(?:[^ \t\n\f\r"<>|(){}.\u00a0]+\\.)*'
    '[^ \t\n\f\r"<>|(){}.\u00a0]+(?:&gt;|>)?'
)
HTHING = f"[A-Za-z0-9][A-Za-z0-9.,\u00ad]*(?:-(?:[A-Za-z0-9\u00ad]+|{ACRO2}\\.))+"
THINGA = "[A-Z]+(?:(?:[+&]|&amp;)[A-Z]+)+"
PHONE = (
    "(?:(?:\\([0-9]{2,3}\\)[ \u00a0]?|(?:\\+\\+?)?(?:[0-9]{2,4}[\\- \u00a0])?[0-9]{2,4}[\\- \u00a0])"
    "[0-9]{3,4}[\\- \u00a0]?[0-9]{3,5}|(?:(?:\\+\\+?)?[0-9]{2,4}\\.)?[0-9]{2,4}\\.[0-9]{3,4}\\.[0-9]{3,5})"
)
QUOTE_MARKS = "`\u2018\u2019\u201a\u201b\u201c\u201d\u0091\u0092\u0093\u0094\u201e\u201f\u2039\u203a\u00ab\u00bb"
QUOTES = f"(?:{APOS}|''|[{QUOTE_MARKS}]{{1,2}})"
DBLQUOT = '(?:"|&quot;)'
INSENTP = "[,;:\u3001]"
FILENAME_EXTENSIONS = (
    "(?:bat|bmp|c|class|cgi|cpp|dll|doc|docx|exe|gif|gz|h|htm|html|jar|java|jpeg|jpg|mov|mp3|pdf|php|pl|png|ppt|ps"
    "|py|sql|tar|txt|wav|x|xml|zip)"
)


# --- token rewrites (the rules' actions, under pycocoevalcap's options) -----------------------------------------


def _same(text: str) -> str:
    return text


def _no_soft_hyphens(text: str) -> str:
    return text.replace("\u00ad", "") or "-"


def _amp(text: str) -> str:
    return re.sub("(?i:&amp;)", "&", text)


def _spaces_to_nbsp(text: str) -> str:
    return text.replace(" ", "\u00a0")


def _parens(text: str) -> str:
    return text.replace("(", "-LRB-").replace(")", "-RRB-")


_LATEX_QUOTES = [
    ("[\u0091\u2018\u201b\u2039]", "`"),
    ("[\u0092\u2019\u203a]", "'"),
    ("[\u0093\u201c\u00ab]", "``"),
    ("[\u0094\u201d\u00bb]", "''"),
]


def _quotes(probably_left: bool) -> Callable[[str], str]:
    """Quotes in LaTeX style: ' and " become ` and `` when they probably open, ' and '' otherwise."""

    def rewrite(text: str) -> str:
        text = re.sub("&apos;|'", "`" if probably_left else "'", text)
        text = re.sub('"|&quot;', "``" if probably_left else "''", text)
        for pattern, replacement in _LATEX_QUOTES:
            text = re.sub(pattern, replacement, text)
        return text

    return rewrite


def _currency(text: str) -> str:
    return re.sub("[\u0080\u00a4\u20a0\u20ac]", "$", text.replace("\u00a2", "cents").replace("\u00a3", "#"))


_FRACTIONS = {"\u00bc": "1/4", "\u00bd": "1/2", "\u00be": "3/4", "\u2153": "1/3", "\u2154": "2/3"}


def _fraction(text: str) -> str:
    return _FRACTIONS.get(text, text)


def _constant(token: str) -> Callable[[str], str]:
    return lambda _text: token


# --- the rules --------------------------------------------------------------------------------------------------

_SKIP = None  # the match makes no token (spaces, untokenizable characters)


class _Rule:
    """One scanner rule: `pattern`, then `context` (trailing context: it must follow and counts for the
    longest-match choice, but is scanned again), how the token is written, and `split`: from the length of
    the match, the length of the token's text and how many characters are consumed (some rules give back
    part of their match to be scanned again)."""

    def __init__(
        self,
        pattern: str,
        rewrite: Callable[[str], str] | None = _same,
        context: str | None = None,
        split: Callable[[int], tuple[int, int]] | None = None,
    ) -> None:
        pattern = _caseless(pattern)
        # (?p): POSIX leftmost-longest matching, as the scanner's automaton matches each rule
        self.regex = regex.compile(f"(?p)({pattern})" + ("" if context is None else f"({_caseless(context)})"))
        self.rewrite = rewrite
        self.split = split

    def match(self, text: str, pos: int) -> tuple[int, int] | None:
        """(length counted for the longest-match choice, length of the matched text without its context)."""
        found = self.regex.match(text, pos)
        return None if found is None else (found.end() - pos, found.end(1) - pos)


def _give_back(count: int) -> Callable[[int], tuple[int, int]]:
    """The token and the scan resume `count` characters before the match's end ("cannot" -> "can" "not")."""
    return lambda length: (length - count, length - count)


def _repeat_last(length: int) -> tuple[int, int]:
    """The whole match is the token and its last character (a full stop) is scanned again: "etc." then "."."""
    return length, length - 1


def _acronym_split(length: int) -> tuple[int, int]:
    """A sentence-final acronym: "I." gives "I" (its full stop is scanned next); longer ones keep the full stop
    and scan it again."""
    return (1, 1) if length == 2 else (length, length - 1)


_RULES: list[_Rule] = [  # in the lexer's order, which breaks ties between matches of one length
    _Rule("c\\+\\+"),
    _Rule("(?:c|f)#"),
    _Rule("cannot", split=_give_back(3)),  # "can" "not"
    _Rule("'twas", split=_give_back(3)),  # "'t" "was"
    _Rule("'tis", split=_give_back(2)),
    _Rule("gonna|gotta|lemme|gimme|wanna", split=_give_back(2)),  # "gon" "na"
    _Rule(SGML, _spaces_to_nbsp),
    _Rule("&(?:md|mdash|ndash);|[\u0096\u0097\u2013\u2014\u2015]", _constant("--")),
    _Rule("&amp;", _amp),
    _Rule("&(?:ht|tl|ur|lr|qc|ql|qr|odq|cdq|#[0-9]+);"),
    _Rule(WORD, _no_soft_hyphens, context=REDAUX),  # "man" of "man's"
    _Rule(SWORD, _no_soft_hyphens, context=SREDAUX),  # "do" of "don't"
    _Rule(WORD, _no_soft_hyphens),
    _Rule(APOWORD),
    _Rule(f"y{APOS}", context=L),
    _Rule(FULLURL),
    _Rule(LIKELYURL),
    _Rule(EMAIL),
    _Rule(f"@[a-zA-Z_][a-zA-Z_0-9]*|#{LETTER}+"),  # twitter names and hashtags
    _Rule(REDAUX, _quotes(False), context="[^A-Za-z]"),
    _Rule(SREDAUX, _quotes(False), context="[^A-Za-z]"),
    _Rule(f"{D}{D}?[\\-/]{D}{D}?[\\-/]{D}{{2,4}}"),  # dates
    _Rule(f"[\\-+]?{NUM}", _no_soft_hyphens),
    _Rule("[\u207a\u207b\u208a\u208b]?(?:[\u2070\u00b9\u00b2\u00b3\u2074-\u2079]+|[\u2080-\u2089]+)"),
    _Rule(f"(?:{D}{{1,4}}[\\- \u00a0])?{D}{{1,4}}(?:\\\\?/|\u2044){D}{{1,4}}", _spaces_to_nbsp),  # fractions
    _Rule("[\u00bc\u00bd\u00be\u2153-\u215e]", _fraction),
    _Rule(f"-(?:rrb|lrb|rcb|lcb|rsb|lsb)-|c\\.d\\.s|pro-|anti-|s(?:&|&amp;)(?:p-500|ls)|cap{APOS}n|c{APOS}est", _amp),
    _Rule("[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}(?:\\\\?/[A-Za-z0-9]+(?:-[A-Za-z]+){0,2}){1,2}"),  # black/white
    _Rule("[A-Z]*\\$|#"),
    _Rule("[\u00a2\u00a3\u00a4\u00a5\u0080\u20a0\u20ac\u060b\u0e3f\u20a4\uffe0\uffe1\uffe5\uffe6]", _currency),
    _Rule(f"{ACRO}\\.", context=f"{SPACENL}+{ACRONYM_FOLLOWERS}{SPACENL}", split=_acronym_split),
    _Rule("(?:ca|figs?|prop|nos?|art|bldg|prop|pp|op)\\.", context=f"{SPACENL}?{D}"),
    _Rule("(?:pt[eyEY]|co)\\.", context=f"{SPACE}(?:ltd|lim)"),
    _Rule(ABBREV1, context=SENTEND, split=_repeat_last),  # "etc." then "." again: it also ends the sentence
    _Rule(ABBREV1, context="[\\s\\S][\\s\\S]"),
    _Rule(ABBREV1, split=_repeat_last),  # at the end of the text
    _Rule(f"{ABBREV4}\\."),
    _Rule(ABBREV4, context=SPACE),
    _Rule(ACRO, context=SPACENL),
    _Rule(f"{APOS}[0-9][0-9]", context=SPACENL),
    _Rule(f"(?:{LETTER}|{D})+(?:\\.(?:{LETTER}|{D})+)*\\.{FILENAME_EXTENSIONS}", context=f"{SPACENL}|[.?!,]"),
    _Rule(f"{WORD}\\.", _no_soft_hyphens, context=INSENTP),
    _Rule(PHONE, lambda text: _parens(_spaces_to_nbsp(text))),
    _Rule(DBLQUOT, _quotes(True), context="[A-Za-z0-9$]"),
    _Rule(DBLQUOT, _quotes(False)),
    _Rule("\x7f", _SKIP),
    _Rule("<|&lt;", _constant("<")),
    _Rule(">|&gt;", _constant(">")),
    _Rule("[<>]?[:;=][\\-o*']?[()DPdpO\\\\{@|\\[\\]]", _parens, context="[^A-Za-z0-9]"),  # smileys
    _Rule(
        "[\\^x=~<>]\\.\\[\\^x=~<>\\]|[\\-\\^x=~<>']_[\\-\\^x=~<>']"
        "|\\([\\-\\^x=~<>'][_.]?[\\-\\^x=~<>']\\)|\\([\\^x=~<>']-[\\^x=~<>'`]\\)",
        _parens,
    ),
    _Rule("\\{", _constant("-LCB-")),
    _Rule("\\}", _constant("-RCB-")),
    _Rule("\\[", _constant("-LSB-")),
    _Rule("\\]", _constant("-RSB-")),
    _Rule("\\(", _constant("-LRB-")),
    _Rule("\\)", _constant("-RRB-")),
    _Rule("-+", lambda text: "--" if 3 <= len(text) <= 4 else text),
    _Rule("\\.{3,5}|(?:\\.[ \u00a0]){2,4}\\.|[\u0085\u2026]", _constant("...")),
    _Rule("@+|#+|_+"),
    _Rule("\\*+|(?:\\\\\\*){1,3}"),
    _Rule(INSENTP),
    _Rule("[?!]+"),
    _Rule("[.\u00a1\u00bf\u037e\u0589\u061f\u06d4\u0700-\u0702\u07fa\u3002]"),
    _Rule("="),
    _Rule("/"),
    _Rule(f"{HTHING}\\.", _no_soft_hyphens, context=INSENTP),
    _Rule(HTHING, _no_soft_hyphens),
    _Rule(f"{THING}\\.", context=INSENTP),
    _Rule(THING),
    _Rule(f"{THINGA}\\.", _amp, context=INSENTP),
    _Rule(THINGA, _amp),
    _Rule("'", _quotes(True), context="[A-Za-z][^ \t\n\r\u00a0]"),
    _Rule(REDAUX, _quotes(False)),
    _Rule(SREDAUX, _quotes(False)),
    _Rule(QUOTES, _quotes(False)),
    _Rule("<<|>>"),
    _Rule(f"[{_MISC_SYMBOLS}]"),
    _Rule(f"\x00|{SPACE}+|[\u200b\u200e\u200f\ufeff]", _SKIP),
    _Rule(LINE_BREAK, _constant(NEWLINE)),
    _Rule("&nbsp;", _SKIP),
    _Rule("[^\n]", _SKIP),  # untokenizable: deleted (the Java tokenizer warns once)
]


@cache
def _rules_starting_with(char: str) -> tuple[_Rule, ...]:
    """The rules that can match text starting with `char` (a match of the one character as a prefix)."""
    return tuple(rule for rule in _RULES if rule.regex.match(char, partial=True) is not None)


def _lex(text: str) -> list[str]:
    """The lexer's tokens of `text`, line breaks included as NEWLINE tokens, in their original case."""
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        best: tuple[int, int, _Rule] | None = None
        for rule in _rules_starting_with(text[pos]):
            lengths = rule.match(text, pos)
            if lengths is not None and (best is None or lengths[0] > best[0]):
                best = (lengths[0], lengths[1], rule)
        assert best is not None, "the last rule takes any character but a newline, which has its own"
        _, length, rule = best
        token, consumed = (length, length) if rule.split is None else rule.split(length)
        if rule.rewrite is not None:
            tokens.append(rule.rewrite(text[pos : pos + token]))
        pos += consumed
    return tokens


def ptb_lex_lines(lines: Sequence[str]) -> list[list[str]]:
    """Each line's tokens as `PTBTokenizer -preserveLines -lowerCase` prints them (before pycocoevalcap's
    punctuation filter), the lines scanned as one text joined by newlines, as pycocoevalcap does: a rule
    may look past the end of a line ("B." keeps its full stop unless the next line starts with "The")."""
    if not lines:
        return []
    text = "\n".join(line.replace("\n", " ").translate(_OTHER_LINE_BREAKS) for line in lines)
    result: list[list[str]] = [[]]
    for token in _lex(text):
        if token == NEWLINE:
            result.append([])
        else:
            result[-1].append(_java_lower(token))
    result += [[] for _ in range(len(lines) - len(result))]
    return result


def _java_lower(token: str) -> str:
    """Java's toLowerCase(Locale.ENGLISH); Python's str.lower differs only in corner cases."""
    return token.lower()


def ptb_tokenize_lines(lines: Sequence[str]) -> list[list[str]]:
    """Each caption's tokens as pycocoevalcap's PTBTokenizer gives them for a set of captions tokenised
    together (one Java call), punctuation tokens removed."""
    # pycocoevalcap: `line.rstrip().split(" ")`, then the filter (rstrip also strips Unicode spaces off the last token)
    words = (" ".join(tokens).rstrip().split(" ") for tokens in ptb_lex_lines(lines))
    return [[word for word in line if word and word not in PTB_REMOVED_TOKENS] for line in words]


def ptb_tokenize(text: str) -> list[str]:
    """One caption's tokens as pycocoevalcap's PTBTokenizer gives them for a set holding only this caption:
    lower-cased PTB tokens ("isn't" -> "is" "n't", "(" -> "-lrb-", "'Tis" -> "'t" "is", "café" whole,
    "john@example.com", "#tag" and URLs whole), punctuation tokens removed."""
    return list(_tokenize_one(text))


@lru_cache(maxsize=65536)
def _tokenize_one(text: str) -> tuple[str, ...]:
    return tuple(ptb_tokenize_lines([text])[0])
