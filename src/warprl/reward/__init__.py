"""Reward models: Bradley–Terry training, the RM module and its folder, and scorers of text.

``load_reward(spec)`` returns a scorer ``f(prompts, completions) -> Tensor[B]`` for an alias
(``imdb-sentiment``, ``vader``), a reward-model folder, a hub id or a Python callable.
"""

from warprl.reward.model import (  # noqa: F401
    RewardError,
    RewardModel,
    Scorer,
    _init_head,
    all_pairs_accuracy,
    bt_loss,
    cached_embeddings,
    eval_reward,
    from_backbone,
    linear_warmup_decay,
    load_reward,
    pairwise_accuracy,
    read_labelled,
    split_labelled,
    train_reward_model,
)
