"""Reference cases for VQAv2 accuracy, ANLS and POPE, with the official scorers' values.

Where the expected values come from:
- VQA: GT-Vision-Lab/VQA, default branch master, commit a013f0043c1e2cdc995922dfe257f7149aa9af06
  (2021-03-11, "Fixed processing answers bug"), `PythonEvaluationTools/vqaEvaluation/vqaEval.py`
  with only its two `print` statements made Python 3 calls: `VQAEval(vqa, vqaRes, n=15).evaluate()`
  on one question per case (ten answers with answer ids 1..10), `evalQA[id] / 100`; the corpus value
  is `accuracy["overall"]` of the same run. Run on 2026-12-01.
- ANLS: the Robust Reading Competition's DocVQA task-1 scoring loop (rrc.cvc.uab.es, threshold 0.5;
  the RRC does not publish it in a repository).
- POPE: RUCAIBox/POPE, default branch main, commit 3df3ba1b110ecce25696989577fad583b67d4239, `evaluate.py` with
  `ans_file` and `label_file` set to files of POPE_CASES' answers ({"answer": ...}) and labels ({"label": ...});
  its printed values. lmms-eval's: EvolvingLMMs-Lab/lmms-eval, main, commit
  75571cfe0fa36ca5ec2e6aa2bb268f9d38295af3, `lmms_eval/tasks/pope/utils.py`: `pope_process_results` on each case,
  then the five `pope_aggregate_*` functions. Both run on 2026-12-07.
"""

from __future__ import annotations

YES = ["yes"] * 10
VQA_CASES = [
    # (prediction, the 10 human answers, official accuracy)
    # -- all ten stripped answers identical: nothing is normalised, the raw strings are compared
    ("yes", YES, 1.0),
    ("Yes", YES, 0.0),  # case counts
    ("yes.", YES, 0.0),  # punctuation counts
    ("  yes\n", YES, 1.0),  # the prediction is stripped
    ("yes", ["yes\t"] * 10, 1.0),  # so are the human answers
    ("yes", ["Yes"] * 10, 0.0),
    ("two", ["2"] * 10, 0.0),  # no number words
    ("a dog", ["dog"] * 10, 0.0),  # no articles
    ("yes" + "." * 20, YES, 0.0),
    ("yes!", YES, 0.0),
    ("what's up", ["whats up"] * 10, 0.0),  # no contractions
    ("Café", ["café"] * 10, 0.0),
    ("", YES, 0.0),
    # -- the humans differ: both sides are processed (punctuation, then digits, articles, contractions)
    ("Yes", ["yes"] * 9 + ["Yes"], 1.0),
    ("yes", ["Yes"] * 5 + ["yes."] * 5, 1.0),  # case and full stop on the human side
    ("Yes!", ["yes"] * 6 + ["YES"] * 4, 1.0),
    ("Yes", ["yes"] * 3 + ["no"] * 7, 0.9),  # leave-one-out: 3 x 2/3 + 7 x 1, over 10
    ("red", ["red"] + ["blue"] * 9, 0.3),  # one human agreeing scores 0.3, not 1/3
    ("", ["yes"] * 9 + [""], 0.3),
    ("a dog.", ["dog"] * 4 + ["puppy"] * 6, 1.0),  # article and full stop dropped
    ("the", ["a"] * 3 + ["an"] * 7, 1.0),  # articles only: every side becomes ""
    ("two", ["2"] * 9 + ["two"], 1.0),  # number words on the human side too
    ("2", ["two"] * 5 + ["2"] * 5, 1.0),
    ("3", ["three"] * 2 + ["four"] * 8, 0.6),
    ("dont know", ["don't know"] * 2 + ["no idea"] * 8, 0.6),  # contraction restored in the prediction
    ("don't know", ["dont know"] * 4 + ["no idea"] * 6, 1.0),  # ...and in the human answers
    ("what's up", ["whats up"] * 5 + ["what's up"] * 5, 1.0),
    ("hes tall", ["he's tall"] * 4 + ["tall"] * 6, 1.0),
    ("it's red", ["its red"] * 2 + ["red"] * 8, 0.0),  # "its" is not in the contraction table
    ("none", ["0"] * 2 + ["none"] + ["nothing"] * 7, 0.9),  # "none" is 0 on both sides; "nothing" is not
    ("0", ["0"] * 2 + ["none"] + ["nothing"] * 7, 0.9),
    ("nothing", ["0"] * 2 + ["none"] + ["nothing"] * 7, 1.0),
    ("None", ["0"] * 5 + ["none"] * 5, 1.0),
    ("1,000", ["1000"] * 5 + ["1,000"] * 5, 1.0),  # a digit-comma-digit text deletes punctuation
    ("1,000 people", ["1000 people"] * 3 + ["many"] * 7, 0.9),
    ("1000", ["1,000"] * 2 + ["one thousand"] * 8, 0.6),
    ("10,5", ["10,5"] + ["105"] * 9, 1.0),
    ("black/white", ["black white"] * 4 + ["black and white"] * 6, 1.0),  # mark between letters -> space
    ("Black / White", ["black white"] * 4 + ["black/white"] * 6, 1.0),  # mark beside a space -> deleted
    ("t-shirt", ["t shirt"] * 3 + ["t-shirt"] * 3 + ["shirt"] * 4, 1.0),
    ("left (mostly)", ["left mostly"] * 3 + ["left"] * 7, 0.9),
    ("3.5", ["3.5"] * 3 + ["3"] * 7, 0.9),  # a full stop before a digit stays
    ("four.", ["4"] * 3 + ["four"] * 7, 1.0),
    ("\tnew york\n", ["new york"] * 9 + ["nyc"], 1.0),
    ("new\nyork", ["new york"] * 8 + ["ny"] * 2, 1.0),
    ("café", ["cafe"] * 2 + ["café"] * 8, 1.0),
    ("yes" + "." * 20, ["yes"] * 9 + ["no"], 1.0),
    ("yes" + "." * 32, ["yes"] * 9 + ["no"], 1.0),
    ("yes" + "." * 33, ["yes"] * 9 + ["no"], 0.0),  # the official call removes at most 32 full stops
    ("yes" + "." * 40, ["yes"] * 9 + ["no"], 0.0),
]
VQA_OFFICIAL_OVERALL = 67.6  # the official run's accuracy["overall"] over VQA_CASES, in percent

ANLS_CASES = [
    # (prediction, answers, official ANLS)
    ("$12.50", ["$12.50", "12.50"], 1.0),
    ("12.50", ["$12.50", "twelve"], 0.8333333333333334),  # the closest answer counts
    ("  The Total ", ["the total"], 1.0),  # case and surrounding spaces are ignored
    ("abcx", ["abcd"], 0.75),
    ("abxy", ["abcd"], 0.5),  # exactly at the threshold: kept
    ("ab", ["abcd"], 0.5),
    ("axyz", ["abcd"], 0.0),  # below the threshold: 0
    ("", ["abc"], 0.0),  # empty prediction
    ("", [""], 1.0),
    ("a c", ["a  b"], 0.75),  # distance on collapsed spaces, length on the raw strings (4, not 3)
    ("straße", ["STRASSE"], 0.7142857142857143),  # length of the upper-cased raw strings (ß -> SS)
]

POPE_CASES = [
    # (the model's answer, the question's label): free-form answers, parsed differently by the two scorers
    ("Yes, there is a dog in the image.", "yes"),
    ("No.", "no"),
    ("There is not a cat in the image.", "no"),
    ("no", "yes"),
    ("I don't know", "no"),  # official: no No/no/not word, so yes
    ("yes. No, wait", "no"),  # official: the first sentence only
    ("Yes no", "no"),
    ("NO", "no"),  # official: upper case is not a no
    ("Nope", "yes"),
    ("not sure", "yes"),
    ("", "no"),
    ("The answer is no, it isn't.", "no"),  # official: the comma goes, "no" is a word
    ("yes", "yes"),
    ("Yes", "no"),
    (" yes ", "yes"),
    ("no.", "yes"),  # lmms-eval: "no." is neither yes nor no
]
# evaluate.py printed: TP 4, FP 5, TN 4, FN 3
POPE_OFFICIAL = {"accuracy": 0.5, "precision": 4 / 9, "recall": 4 / 7, "f1": 0.5, "yes_ratio": 0.5625}
POPE_LMMS_EVAL = {"accuracy": 0.1875, "precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "yes_ratio": 0.4375}
