"""Reward models: the RM module and its folders, scorers of text, Bradley–Terry training and evaluation.

``load_reward(spec)`` returns a scorer ``f(prompts, completions) -> Tensor[B]`` for an alias
(``imdb-sentiment``, ``vader``), a reward-model folder, a hub id or a Python callable.

* :mod:`warprl.reward.model` — :class:`RewardModel`, saving and loading RM folders and bare heads;
* :mod:`warprl.reward.scorers` — :func:`load_reward` and the :class:`Scorer` sources;
* :mod:`warprl.reward.bradley_terry` — the BT loss, pairwise metrics and the one training loop.

The `warprl reward train|eval|score` commands are in :mod:`warprl.commands.reward`.
"""

from warprl.reward.bradley_terry import (
    Recipe,
    all_pairs_accuracy,
    bt_loss,
    cached_embeddings,
    evaluate_pairs,
    pair_metrics,
    pairwise_accuracy,
    train_full,
    train_head,
)
from warprl.reward.model import RewardModel, find_head, from_backbone, init_head, load_reward_model
from warprl.reward.scorers import (
    CallableReward,
    ModelReward,
    RewardError,
    Scorer,
    VaderReward,
    load_reward,
    reference_texts,
)

__all__ = [
    "CallableReward", "ModelReward", "Recipe", "RewardError", "RewardModel", "Scorer", "VaderReward",
    "all_pairs_accuracy", "bt_loss", "cached_embeddings", "evaluate_pairs", "find_head", "from_backbone",
    "init_head", "load_reward", "load_reward_model", "pair_metrics", "pairwise_accuracy", "reference_texts",
    "train_full", "train_head",
]
