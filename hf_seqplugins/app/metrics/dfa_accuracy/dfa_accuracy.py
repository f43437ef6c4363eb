"""RegBench's DFA accuracy: how often the greedy next symbol keeps the current string in the row's language."""

import datasets
import evaluate

_DESCRIPTION = """At every position whose next input token is a symbol (not the separator, not padding), the predicted
next token is appended to the current string (the gold tokens since the last separator). It scores 1 when the
row's DFA has a transition for it from the state the string reaches (all states accept), else 0. Scoring stops
at padding. Returns valid / scored over all rows."""
_INPUTS = """
Args:
    predictions: per row, the predicted next token at each position (argmax of the logits; position t predicts t+1).
    references: per row, the input token ids.
    dfa: per row, the automaton as [state, symbol, next state] rows (the `dfa` column of `tasks.regbench`); start 0.
    separator_id, pad_id: the separator and padding tokens (RegBench: 18 and 19).
Returns:
    dfa_accuracy.
"""


class DFAAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Akyurek, Wang, Kim, Andreas (2024), In-Context Language Learning: Architectures and Algorithms",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int64")),
                    "references": datasets.Sequence(datasets.Value("int64")),
                    "dfa": datasets.Sequence(datasets.Sequence(datasets.Value("int64"))),
                }
            ),
        )

    def _compute(self, predictions, references, dfa, separator_id=18, pad_id=19):
        valid = scored = 0
        for predicted, tokens, table in zip(predictions, references, dfa):
            transitions = {(state, symbol): target for state, symbol, target in table}
            state = 0
            for t in range(len(tokens) - 1):
                state = 0 if tokens[t] == separator_id else transitions.get((state, tokens[t]))
                if state is None:
                    raise ValueError(
                        f"reference token {tokens[t]} at position {t} is not a transition of the row's DFA"
                    )
                if tokens[t + 1] == pad_id:
                    break
                if tokens[t + 1] != separator_id:
                    scored += 1
                    valid += (state, predicted[t]) in transitions
        if scored == 0:
            raise ValueError("no scored positions: every row is empty or padding")
        return {"dfa_accuracy": valid / scored}
