"""Random deterministic finite automata for RegBench (in-context language learning; the `regbench` task of
`hf_seqplugins.app.tasks`).

A `DFA` here is partial: a missing transition rejects. All states accept, so a string is in the
language exactly when the walk from state 0 never falls off the transition table.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

NUM_SYMBOLS = 18


@dataclass(frozen=True)
class DFA:
    """`transitions[(state, symbol)] = next state`; start state 0, every state accepting."""

    transitions: dict[tuple[int, int], int]

    def step(self, state: int | None, symbol: int) -> int | None:
        """The next state, or None when `symbol` has no transition from `state` (rejected)."""
        return None if state is None else self.transitions.get((state, symbol))

    def accepts(self, symbols: list[int]) -> bool:
        state = 0
        for symbol in symbols:
            state = self.step(state, symbol)
        return state is not None

    def outgoing(self, state: int) -> list[int]:
        return sorted(symbol for (source, symbol) in self.transitions if source == state)

    def table(self) -> list[list[int]]:
        """`[[state, symbol, next state], ...]` sorted: a dataset column and the key for deduplication."""
        return sorted([state, symbol, target] for (state, symbol), target in self.transitions.items())

    @classmethod
    def from_table(cls, table: list[list[int]]) -> DFA:
        return cls({(state, symbol): target for state, symbol, target in table})

    def random_string(self, rng: random.Random, length: int) -> list[int]:
        """A uniform random walk of `length` symbols from the start state (every state has an exit)."""
        state, symbols = 0, []
        for _ in range(length):
            symbol = rng.choice(self.outgoing(state))
            symbols.append(symbol)
            state = self.transitions[(state, symbol)]
        return symbols


def random_dfa(rng: random.Random, min_states: int = 4, max_states: int = 12, max_outgoing: int = 4) -> DFA:
    """RegBench's sampler: 4-12 states, an alphabet of 4-18 of the symbols, 1-3 transitions per state to
    distinct other states (no self-loops), then minimised and trimmed to the reachable part."""
    num_states = rng.randint(min_states, max_states)
    alphabet = rng.sample(range(NUM_SYMBOLS), rng.randint(4, NUM_SYMBOLS))
    transitions = {}
    for state in range(num_states):
        count = rng.randint(1, max_outgoing - 1)
        others = [s for s in range(num_states) if s != state]
        for symbol, target in zip(rng.sample(alphabet, count), rng.sample(others, count)):
            transitions[(state, symbol)] = target
    return minimize(DFA(transitions))


def minimize(dfa: DFA) -> DFA:
    """The minimal equivalent DFA with states renumbered in breadth-first order from 0 (a canonical form).

    Moore's partition refinement: with every state accepting, two states differ only through which
    symbols lead (eventually) off the table, so start from one block and split by successor blocks.
    Unreachable states are dropped by the final traversal.
    """
    states = sorted({s for s, _ in dfa.transitions} | set(dfa.transitions.values()) | {0})
    symbols = sorted({symbol for _, symbol in dfa.transitions})
    block = dict.fromkeys(states, 0)
    while True:
        signature = {s: (block[s], *(block.get(dfa.transitions.get((s, a)), -1) for a in symbols)) for s in states}
        numbering = {sig: i for i, sig in enumerate(sorted(set(signature.values())))}
        refined = {s: numbering[signature[s]] for s in states}
        if len(numbering) == len(set(block.values())):
            break
        block = refined
    representative = {}
    for s in states:
        representative.setdefault(block[s], s)
    index, queue, transitions = {block[0]: 0}, [block[0]], {}
    while queue:
        source = queue.pop(0)
        for a in symbols:
            target = dfa.transitions.get((representative[source], a))
            if target is None:
                continue
            if block[target] not in index:
                index[block[target]] = len(index)
                queue.append(block[target])
            transitions[(index[source], a)] = index[block[target]]
    return DFA(transitions)


def unique_dfas(count: int, seed: int = 0, skip: int = 0) -> list[DFA]:
    """`count` distinct random DFAs: the stream of distinct DFAs drawn from `seed`, after its first `skip`.

    Splits drawn from one seed with disjoint `skip` ranges never share a DFA."""
    rng, seen, found = random.Random(seed), set(), []
    while len(found) < skip + count:
        dfa = random_dfa(rng)
        key = str(dfa.table())
        if key not in seen:
            seen.add(key)
            found.append(dfa)
    return found[skip:]
