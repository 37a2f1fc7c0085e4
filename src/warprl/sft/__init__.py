"""Supervised fine-tuning of a causal LM on text: packing/bucketing, LoRA (peft), per-token NLL, the loop."""
