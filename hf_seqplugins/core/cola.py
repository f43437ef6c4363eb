"""CoLa (chain of layers): run a pretrained causal LM's layers in another order, skipped or repeated, untrained.

A decoder has layers ``L_0 .. L_{N-1}``. A chain is a sequence of layer indices ``c = (i_1, ..., i_m)``, run as
``logits = lm_head(norm(L_{i_m}(... L_{i_1}(embed(x)))))``: the identity chain ``(0, ..., N-1)`` is the stock model,
a chain without an index skips that layer, and one holding an index twice runs the layer twice with the same weights.
Embeddings, the final norm, the head and the rotary positions are the model's own.

`with_chain(model, chain)` (or the context manager `use_chain`) puts a chain in place and `remove_chain` restores the
model exactly. While a chain is in place:

- the decoder's layer list holds one `ChainStep` per chain position, which runs the (shared) layer module; the
  layers themselves move to the decoder's ``cola_layers`` (each once, so `parameters()`, ``.to()`` and hooks see
  every layer once, skipped ones included, and state-dict keys read ``model.cola_layers.<i>...``);
- the model and its decoder see a copy of the config whose `num_hidden_layers` is the chain length and whose
  `layer_types` (and `mlp_layer_types`) list the type of the layer at each position, so `DynamicCache(config=...)`,
  built by `generate()` or the decoder, has one slot per position;
- each step hands its layer a `SlotCache`: a view of the cache in which every layer index means the step's slot, so a
  layer run twice keeps two KV caches (attention) or two recurrent states (``read_state`` / ``write_state``), and
  the layer's modules, with their ``layer_idx``, are left as they are.

`CoLaSearch` looks for a better chain per sample: Monte-Carlo tree search over skip and repeat edits starting from
the identity chain, scored by a reward callable (`CorrectnessReward`: correct minus a length penalty).
`summarize_searches` gives the two shares the paper reports: correct samples that a shorter chain also gets right,
and wrong samples that some chain fixes.
"""

from __future__ import annotations

import copy
import functools
import inspect
import math
import random
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

# Where decoders keep their layer list (an nn.ModuleList), tried in this order.
LAYER_PATHS = (
    "model.layers",
    "model.decoder.layers",
    "model.language_model.layers",
    "transformer.h",
    "transformer.layers",
    "gpt_neox.layers",
    "backbone.layers",
    "layers",
)
# The names under which decoder layers take the cache.
CACHE_ARGUMENTS = ("cache", "past_key_values", "past_key_value", "layer_past")
# Config lists with one entry per layer, reordered along the chain.
PER_LAYER_CONFIG_LISTS = ("layer_types", "mlp_layer_types")
APPLIED = "_cola_applied"
# Where the decoder keeps its own layer list while a chain is in place.
ORIGINAL_LAYERS = "cola_layers"


@dataclass
class _Applied:
    """What `with_chain` replaced, to put back: the decoder's layer list and every `config` attribute it swapped."""

    holder: nn.Module
    attribute: str
    layers: nn.ModuleList
    configs: list[tuple[nn.Module, object]]
    chain: tuple[int, ...]


class _SlotLayers:
    """`cache.layers` as a `SlotCache` shows it: any index gives the slot's layer."""

    __slots__ = ("_layers", "_slot")

    def __init__(self, layers, slot: int):
        self._layers, self._slot = layers, slot

    def __getitem__(self, index):
        return self._layers[self._slot] if isinstance(index, int) else self._layers[index]

    def __len__(self) -> int:
        return len(self._layers)

    def __iter__(self):
        return iter(self._layers)


@functools.cache
def _layer_index_signature(cache_class: type, name: str) -> inspect.Signature | None:
    """The signature of `cache_class.name` (without self) where it takes a `layer_idx`, else None."""
    method = getattr(cache_class, name, None)
    if not callable(method):
        return None
    try:
        signature = inspect.signature(method)
    except (TypeError, ValueError):
        return None
    if "layer_idx" not in signature.parameters:
        return None
    return signature.replace(parameters=list(signature.parameters.values())[1:])


class SlotCache:
    """A view of a transformers `Cache` for one chain position: every method taking a `layer_idx` (update,
    get_seq_length, get_recurrent_state, update_conv_state, ...) gets `slot` instead, and ``layers[i]`` is
    ``layers[slot]``; everything else is the cache's own. A `layer_idx` left out where its default is None (meaning
    the whole cache) stays None."""

    __slots__ = ("_cache", "_slot")

    def __init__(self, cache, slot: int):
        object.__setattr__(self, "_cache", cache)
        object.__setattr__(self, "_slot", slot)

    def __getattr__(self, name: str):
        cache, slot = object.__getattribute__(self, "_cache"), object.__getattribute__(self, "_slot")
        value = getattr(cache, name)
        if name == "layers":
            return _SlotLayers(value, slot)
        signature = _layer_index_signature(type(cache), name)
        if signature is None:
            return value

        @functools.wraps(value)
        def at_slot(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            given = "layer_idx" in bound.arguments
            if given or signature.parameters["layer_idx"].default is not None:
                bound.arguments["layer_idx"] = slot
            return value(*bound.args, **bound.kwargs)

        return at_slot

    def __setattr__(self, name: str, value) -> None:
        setattr(object.__getattribute__(self, "_cache"), name, value)

    def __len__(self) -> int:
        return len(object.__getattribute__(self, "_cache"))

    def __repr__(self) -> str:
        return f"SlotCache(slot={object.__getattribute__(self, '_slot')}, {object.__getattribute__(self, '_cache')!r})"


class ChainStep(nn.Module):
    """Chain position `position` running decoder layer `layer_index` (`layer`, shared with every other position that
    runs it): the layer's forward with its cache argument replaced by the position's `SlotCache`."""

    def __init__(self, layer: nn.Module, layer_index: int, position: int):
        super().__init__()
        # not registered as a submodule: the layer stays in the module tree once, under the decoder's
        # `ORIGINAL_LAYERS`, so parameters(), .to() and transformers' output-capturing hooks see it once
        self.__dict__["layer"] = layer
        self.layer_index, self.position = layer_index, position
        parameters = list(inspect.signature(layer.forward).parameters)
        self.cache_argument = next((name for name in CACHE_ARGUMENTS if name in parameters), None)
        self.cache_argument_index = parameters.index(self.cache_argument) if self.cache_argument else None

    def forward(self, *args, **kwargs):
        for name in CACHE_ARGUMENTS:
            if kwargs.get(name) is not None:
                kwargs[name] = SlotCache(kwargs[name], self.position)
        index = self.cache_argument_index
        if index is not None and index < len(args) and args[index] is not None:
            args = (*args[:index], SlotCache(args[index], self.position), *args[index + 1 :])
        return self.layer(*args, **kwargs)

    def extra_repr(self) -> str:
        return f"position={self.position}, layer_index={self.layer_index}"


def _find_layers(model: nn.Module) -> tuple[nn.Module, str, list[nn.Module]]:
    """(the module holding the layer list, its attribute name, the modules from `model` down to the holder)."""
    for path in LAYER_PATHS:
        *parents, attribute = path.split(".")
        modules, module = [model], model
        for name in parents:
            module = getattr(module, name, None)
            if not isinstance(module, nn.Module):
                break
            modules.append(module)
        else:
            if isinstance(getattr(module, attribute, None), nn.ModuleList):
                return module, attribute, modules
    raise ValueError(
        f"found no decoder layers on {type(model).__name__}: tried the attribute paths {', '.join(LAYER_PATHS)} "
        "(each must be an nn.ModuleList of layers)"
    )


def _original_layers(model: nn.Module) -> nn.ModuleList:
    applied = model.__dict__.get(APPLIED)
    if applied is not None:
        return applied.layers
    holder, attribute, _ = _find_layers(model)
    return getattr(holder, attribute)


def identity_chain(model: nn.Module) -> tuple[int, ...]:
    """``(0, ..., N-1)`` for a model with N decoder layers (its own layers, whatever chain is in place)."""
    return tuple(range(len(_original_layers(model))))


def current_chain(model: nn.Module) -> tuple[int, ...]:
    """The chain in place on `model`, its identity chain when there is none."""
    applied = model.__dict__.get(APPLIED)
    return applied.chain if applied is not None else identity_chain(model)


def check_chain(chain: Iterable[int], num_layers: int) -> tuple[int, ...]:
    """`chain` as a tuple, or ValueError naming what is wrong with it (empty, not integers, out of range)."""
    if isinstance(chain, (str, bytes)) or not isinstance(chain, Iterable):
        raise ValueError(f"a chain must be a sequence of layer indices, got {chain!r}")
    chain = tuple(chain)
    if not chain:
        raise ValueError("the chain is empty: it must hold at least one layer index")
    for position, index in enumerate(chain):
        if isinstance(index, bool) or not isinstance(index, int):
            raise ValueError(f"chain position {position} holds {index!r}, which is not an integer layer index")
        if not 0 <= index < num_layers:
            raise ValueError(
                f"chain position {position} holds layer index {index}, out of range: the model has {num_layers} "
                f"layers (indices 0 to {num_layers - 1})"
            )
    return chain


def _settable_lists_class(config_class: type, names: tuple[str, ...]) -> type:
    """A subclass of `config_class` in which the read-only properties `names` (e.g. a `layer_types` computed from
    other fields) are plain settable attributes."""
    key = (config_class, names)
    if key not in _SETTABLE_LISTS_CLASSES:

        def stored(name: str) -> property:
            return property(
                lambda self: self.__dict__.get(f"cola_{name}"),
                lambda self, value: self.__dict__.__setitem__(f"cola_{name}", value),
            )

        members = {"__module__": config_class.__module__, "__doc__": config_class.__doc__}
        members.update({name: stored(name) for name in names})
        _SETTABLE_LISTS_CLASSES[key] = type(config_class.__name__, (config_class,), members)
    return _SETTABLE_LISTS_CLASSES[key]


_SETTABLE_LISTS_CLASSES: dict[tuple[type, tuple[str, ...]], type] = {}


def chain_config(config, chain: tuple[int, ...]):
    """A copy of the decoder `config` laid out along `chain`: `num_hidden_layers` = len(chain), each per-layer list
    (`layer_types`, `mlp_layer_types`) holding the entry of the layer at each position, and `cola_chain` = the chain.
    The original is untouched; the modules keep reading it."""
    if getattr(config, "is_heterogeneous", False):
        raise ValueError(
            f"{type(config).__name__} is heterogeneous (per_layer_config): chains of its layers are not supported"
        )
    chained = copy.deepcopy(config)
    lists = {name: getattr(config, name, None) for name in PER_LAYER_CONFIG_LISTS}
    lists = {name: entries for name, entries in lists.items() if entries is not None}
    descriptors = {name: inspect.getattr_static(type(config), name, None) for name in lists}
    read_only = tuple(name for name, d in descriptors.items() if isinstance(d, property) and d.fset is None)
    if read_only:
        chained.__class__ = _settable_lists_class(type(config), read_only)
    chained.num_hidden_layers = len(chain)
    for name, entries in lists.items():
        if len(entries) <= max(chain):
            raise ValueError(
                f"{type(config).__name__}.{name} has {len(entries)} entries, fewer than the layers the chain uses "
                f"(up to index {max(chain)})"
            )
        setattr(chained, name, [entries[i] for i in chain])
    chained.cola_chain = list(chain)
    return chained


def with_chain(model: nn.Module, chain: Iterable[int]) -> nn.Module:
    """Put `chain` (indices into the model's own layers) in place on `model`, replacing any chain already there, and
    return the model. `remove_chain` restores it exactly; see the module docstring for what changes meanwhile. On
    a ValueError the model keeps the chain it had."""
    previous = model.__dict__.get(APPLIED)
    remove_chain(model)
    try:
        return _apply_chain(model, chain)
    except BaseException:
        if previous is not None:
            _apply_chain(model, previous.chain)
        raise


def _apply_chain(model: nn.Module, chain: Iterable[int]) -> nn.Module:
    holder, attribute, path = _find_layers(model)
    layers = getattr(holder, attribute)
    chain = check_chain(chain, len(layers))
    original = getattr(holder, "config", None)
    if original is None:
        original = getattr(model, "config", None)
    configs = []
    if original is not None:
        chained = chain_config(original, chain)
        configs = [(module, original) for module in path if getattr(module, "config", None) is original]
        for module, _ in configs:
            module.config = chained
    steps = nn.ModuleList(ChainStep(layers[index], index, position) for position, index in enumerate(chain))
    setattr(holder, attribute, steps)
    setattr(holder, ORIGINAL_LAYERS, layers)
    model.__dict__[APPLIED] = _Applied(holder, attribute, layers, configs, chain)
    return model


def remove_chain(model: nn.Module) -> nn.Module:
    """Put the model's own layer list and config back (a no-op without a chain) and return the model."""
    applied = model.__dict__.pop(APPLIED, None)
    if applied is not None:
        delattr(applied.holder, ORIGINAL_LAYERS)
        setattr(applied.holder, applied.attribute, applied.layers)
        for module, config in applied.configs:
            module.config = config
    return model


@contextmanager
def chain_recorded(model: nn.Module) -> Iterator[nn.Module]:
    """`with chain_recorded(model):` the model without its chain, its config recording the chain as `cola_chain`:
    what a checkpoint of a chained model holds (the stock layers and weights, and the chain to apply on loading,
    `apply_recorded_chain`); then the chain back. A no-op without a chain. This package's models save through it."""
    applied = model.__dict__.get(APPLIED)
    if applied is None:
        yield model
        return
    remove_chain(model)
    model.config.cola_chain = list(applied.chain)
    try:
        yield model
    finally:
        del model.config.cola_chain
        with_chain(model, applied.chain)


def save_chained(model: nn.Module, save_directory, **kwargs) -> None:
    """`model.save_pretrained(save_directory, **kwargs)` of the stock model with its chain recorded in the config
    (for any transformers model; this package's models do it in their own `save_pretrained`)."""
    with chain_recorded(model):
        model.save_pretrained(save_directory, **kwargs)


def apply_recorded_chain(model: nn.Module) -> nn.Module:
    """Put in place the chain a loaded checkpoint's config records (`cola_chain`), if any, and return the model
    (this package's models do it in `from_pretrained`, with remote code too)."""
    chain = getattr(model.config, "cola_chain", None)
    return model if chain is None else with_chain(model, chain)


@contextmanager
def use_chain(model: nn.Module, chain: Iterable[int]) -> Iterator[nn.Module]:
    """`with use_chain(model, chain):` runs `model` along `chain`, then puts back whatever was in place before (the
    stock model or an earlier chain), also when the block raises."""
    previous = model.__dict__.get(APPLIED)
    with_chain(model, chain)
    try:
        yield model
    finally:
        if previous is None:
            remove_chain(model)
        else:
            with_chain(model, previous.chain)


def skip_block(chain: Sequence[int], start: int, length: int) -> tuple[int, ...]:
    """`chain` without its positions ``start .. start + length - 1``."""
    _check_block(chain, start, length)
    if length >= len(chain):
        raise ValueError(f"skipping {length} positions of a chain of {len(chain)} would leave it empty")
    return tuple(chain[:start]) + tuple(chain[start + length :])


def repeat_block(chain: Sequence[int], start: int, length: int, times: int = 1) -> tuple[int, ...]:
    """`chain` with its positions ``start .. start + length - 1`` run `times` more times right after themselves."""
    _check_block(chain, start, length)
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ValueError(f"times must be an integer >= 1, got {times!r}")
    block = tuple(chain[start : start + length])
    return tuple(chain[: start + length]) + block * times + tuple(chain[start + length :])


def _check_block(chain: Sequence[int], start: int, length: int) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"the block length must be an integer >= 1, got {length!r}")
    if isinstance(start, bool) or not isinstance(start, int) or not 0 <= start <= len(chain) - length:
        raise ValueError(
            f"a block of {length} positions starting at {start!r} does not fit a chain of {len(chain)} positions"
        )


@dataclass(frozen=True)
class ChainEdit:
    """One search action: skip chain positions ``start .. start + length - 1`` (`kind` "skip") or run them `times`
    more times (`kind` "repeat")."""

    kind: str
    start: int
    length: int
    times: int = 1

    def apply(self, chain: Sequence[int]) -> tuple[int, ...]:
        if self.kind == "skip":
            return skip_block(chain, self.start, self.length)
        if self.kind == "repeat":
            return repeat_block(chain, self.start, self.length, self.times)
        raise ValueError(f"ChainEdit.kind must be 'skip' or 'repeat', got {self.kind!r}")


def chain_edits(
    chain: Sequence[int], block_lengths: Sequence[int], repeat_counts: Sequence[int], max_length: int
) -> list[ChainEdit]:
    """Every skip of a block of `block_lengths` positions that leaves at least one, and every repeat of such a block
    `repeat_counts` more times that keeps the chain at most `max_length` long."""
    edits = []
    for length in block_lengths:
        for start in range(len(chain) - length + 1):
            if length < len(chain):
                edits.append(ChainEdit("skip", start, length))
            edits.extend(
                ChainEdit("repeat", start, length, times)
                for times in repeat_counts
                if len(chain) + length * times <= max_length
            )
    return edits


def next_token_correct(model: nn.Module, sample: Mapping) -> bool:
    """Whether the model's argmax at the last position of ``sample["input_ids"]`` (`[T]` or `[1, T]`, a tensor or a
    list of ints) is ``sample["label"]`` (an int token id)."""
    ids = torch.as_tensor(sample["input_ids"], dtype=torch.long)
    ids = ids[None] if ids.dim() == 1 else ids
    device = next(model.parameters()).device
    with torch.no_grad():
        logits = model(input_ids=ids.to(device), use_cache=False).logits
    return int(logits[0, -1].argmax()) == int(sample["label"])


@dataclass(frozen=True)
class CorrectnessReward:
    """The reward ``correct - length_penalty * len(chain) / N`` (N: the model's own layer count) from
    ``is_correct(model_with_chain, sample) -> bool`` (e.g. `next_token_correct`). The search records each chain's
    correctness when its reward is one of these (`ChainSearchResult.correct`)."""

    is_correct: Callable[[nn.Module, object], bool]
    length_penalty: float = 0.0

    def __post_init__(self):
        if not _finite_non_negative(self.length_penalty):
            raise ValueError(
                f"CorrectnessReward.length_penalty must be a finite number >= 0, got {self.length_penalty!r}"
            )

    def evaluate(self, model: nn.Module, sample, chain: Sequence[int]) -> tuple[float, bool]:
        """(reward, correct) of `model` running `chain` on `sample`."""
        correct = bool(self.is_correct(model, sample))
        return float(correct) - self.length_penalty * len(chain) / len(identity_chain(model)), correct

    def __call__(self, model: nn.Module, sample, chain: Sequence[int]) -> float:
        return self.evaluate(model, sample, chain)[0]


@dataclass
class ChainSearchResult:
    """One sample's search: the best chain and its reward, the identity chain's, and every chain evaluated.

    `visited` maps each evaluated chain to its reward, in evaluation order (the identity first); `correct` maps them to
    their correctness when the reward was a `CorrectnessReward`, else it is None. `simulations`: evaluations made."""

    chain: tuple[int, ...]
    reward: float
    identity: tuple[int, ...]
    identity_reward: float
    visited: dict[tuple[int, ...], float]
    correct: dict[tuple[int, ...], bool] | None
    simulations: int


@dataclass
class _Node:
    chain: tuple[int, ...]
    depth: int
    visits: int = 0
    total: float = 0.0
    untried: list[ChainEdit] | None = None
    children: list[_Node] = field(default_factory=list)
    exhausted: bool = False


class CoLaSearch:
    """Monte-Carlo tree search over chains, per sample, from the identity chain.

    A node is a chain and its children are the chains one `ChainEdit` away (`chain_edits`); a chain already
    evaluated in this search is not added again, so every simulation evaluates a new chain. A simulation descends
    from the root by UCT, ``Q / n + exploration * sqrt(ln n_parent / n)`` (Q: summed reward, n: visits), to the
    first node with an edit left to try, applies one such edit (picked at random with ``random.Random(seed)``, so a
    search is deterministic), evaluates the new chain's reward and adds it to Q and n along the path.

    Args:
        reward: ``reward(model_with_chain, sample, chain) -> float``, called with the chain in place
            (`CorrectnessReward` for "correct minus length penalty").
        budget: evaluations per sample, the identity chain's included (fewer when the tree runs out of chains).
        exploration: the UCT constant c >= 0.
        block_lengths: the lengths of the blocks of chain positions that an edit skips or repeats.
        repeat_counts: how many more times a repeat runs its block.
        max_length: the longest chain considered (None: twice the model's layer count).
        max_edits: the most edits from the identity chain (tree depth; None: no limit but the budget).
        seed: the seed of every sample's search.
    """

    def __init__(
        self,
        reward: Callable[[nn.Module, object, tuple[int, ...]], float],
        *,
        budget: int = 64,
        exploration: float = 1.0,
        block_lengths: Sequence[int] = (1, 2),
        repeat_counts: Sequence[int] = (1,),
        max_length: int | None = None,
        max_edits: int | None = None,
        seed: int = 0,
    ):
        if not callable(reward):
            raise ValueError(f"CoLaSearch.reward must be callable (model, sample, chain) -> float, got {reward!r}")
        self.reward = reward
        self.budget = _positive_int("budget", budget)
        if not _finite_non_negative(exploration):
            raise ValueError(f"CoLaSearch.exploration must be a finite number >= 0, got {exploration!r}")
        self.exploration = float(exploration)
        self.block_lengths = _positive_ints("block_lengths", block_lengths)
        self.repeat_counts = _positive_ints("repeat_counts", repeat_counts)
        self.max_length = None if max_length is None else _positive_int("max_length", max_length)
        self.max_edits = None if max_edits is None else _positive_int("max_edits", max_edits)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"CoLaSearch.seed must be an integer, got {seed!r}")
        self.seed = seed

    def search(self, model: nn.Module, sample) -> ChainSearchResult:
        """The search for one sample; `model` is left as it was (stock or with its chain)."""
        identity = identity_chain(model)
        max_length = 2 * len(identity) if self.max_length is None else self.max_length
        rng = random.Random(self.seed)
        visited: dict[tuple[int, ...], float] = {}
        correct = {} if isinstance(self.reward, CorrectnessReward) else None

        def evaluate(chain: tuple[int, ...]) -> float:
            with use_chain(model, chain):
                if correct is None:
                    value = self.reward(model, sample, chain)
                else:
                    value, correct[chain] = self.reward.evaluate(model, sample, chain)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"the reward of chain {list(chain)} must be a finite number, got {value!r}")
            visited[chain] = float(value)
            return visited[chain]

        root = _Node(identity, depth=0)
        root.visits, root.total = 1, evaluate(identity)
        while len(visited) < self.budget and not root.exhausted:
            path, node = [root], root
            child = None
            while child is None:
                if node.untried is None:
                    can_edit = self.max_edits is None or node.depth < self.max_edits
                    node.untried = (
                        chain_edits(node.chain, self.block_lengths, self.repeat_counts, max_length) if can_edit else []
                    )
                    rng.shuffle(node.untried)
                while node.untried and child is None:
                    chain = node.untried.pop().apply(node.chain)
                    if chain not in visited:
                        child = _Node(chain, depth=node.depth + 1)
                if child is not None:
                    break
                live = [c for c in node.children if not c.exhausted]
                if not live:
                    node.exhausted = True
                    break
                node = max(live, key=lambda c: self._uct(c, node.visits))
                path.append(node)
            if child is None:
                continue
            node.children.append(child)
            value = evaluate(child.chain)
            for visited_node in (*path, child):
                visited_node.visits += 1
                visited_node.total += value
        best = max(visited, key=visited.__getitem__)
        return ChainSearchResult(
            chain=best,
            reward=visited[best],
            identity=identity,
            identity_reward=visited[identity],
            visited=visited,
            correct=correct,
            simulations=len(visited),
        )

    def _uct(self, node: _Node, parent_visits: int) -> float:
        return node.total / node.visits + self.exploration * math.sqrt(math.log(parent_visits) / node.visits)

    def search_all(
        self, model: nn.Module, samples: Iterable, *, disable: bool = False, desc: str = "CoLa search"
    ) -> list[ChainSearchResult]:
        """`search` on every sample, with a tqdm progress bar over the samples (`disable=True`: none)."""
        samples = list(samples)
        return [self.search(model, sample) for sample in tqdm(samples, desc=desc, disable=disable)]


def search_chain(model: nn.Module, sample, reward, **options) -> ChainSearchResult:
    """`CoLaSearch(reward, **options).search(model, sample)`."""
    return CoLaSearch(reward, **options).search(model, sample)


def _finite_non_negative(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and 0 <= value < math.inf


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"CoLaSearch.{name} must be an integer >= 1, got {value!r}")
    return value


def _positive_ints(name: str, values) -> tuple[int, ...]:
    values = tuple(values) if isinstance(values, Iterable) else (values,)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ValueError(f"CoLaSearch.{name} must be a non-empty list of integers >= 1, got {list(values)!r}")
    return values


@dataclass(frozen=True)
class CoLaSummary:
    """Over searched samples: `identity_correct` / `identity_wrong` samples the stock model gets right / wrong;
    `shorter` of the right ones for which a chain shorter than N was also right; `fixed` of the wrong ones for which
    some chain was right. The shares are None where there are no samples to divide by."""

    identity_correct: int
    identity_wrong: int
    shorter: int
    fixed: int

    @property
    def shorter_share(self) -> float | None:
        return self.shorter / self.identity_correct if self.identity_correct else None

    @property
    def fixed_share(self) -> float | None:
        return self.fixed / self.identity_wrong if self.identity_wrong else None


def summarize_searches(
    results: Iterable[ChainSearchResult], correct: Callable[[tuple[int, ...], float], bool] | None = None
) -> CoLaSummary:
    """The paper's two numbers from per-sample results. A chain's correctness is the one recorded by the search
    (`ChainSearchResult.correct`, with a `CorrectnessReward`), else ``correct(chain, reward)``."""
    counts = {"identity_correct": 0, "identity_wrong": 0, "shorter": 0, "fixed": 0}
    for number, result in enumerate(results):
        if result.correct is not None:
            judged = result.correct
        elif correct is not None:
            judged = {chain: bool(correct(chain, value)) for chain, value in result.visited.items()}
        else:
            raise ValueError(
                f"result {number} records no correctness (its reward was not a CorrectnessReward): pass "
                "correct=(chain, reward) -> bool"
            )
        if judged[result.identity]:
            counts["identity_correct"] += 1
            counts["shorter"] += any(ok and len(chain) < len(result.identity) for chain, ok in judged.items())
        else:
            counts["identity_wrong"] += 1
            counts["fixed"] += any(judged.values())
    return CoLaSummary(**counts)
