"""warprl: align language models to a reward with REINFORCE, RLOO and WARP."""

__version__ = "0.1.0"
