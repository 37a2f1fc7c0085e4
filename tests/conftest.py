"""Shared fixtures: tiny random models and tokenizers built on the spot (no hub, no ../shared)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

def pytest_addoption(parser):
    parser.addoption("--reliability-report", default="", metavar="PATH",
                     help="after a complete, passing run of tests/reliability, write its table to PATH "
                          "(`make reliability-report`; a plain test run writes nothing into the repository)")


WORDS = ("good great bad awful movie film plot actor story the a and was is it this I love hate boring fun "
         "wonderful terrible scene end music cast").split()


# Lines of the test prompt files (.txt): a .txt is split into training and held-out lines (10 % held out,
# at least 2 each side), so a file must be long enough for both; 64 lines leave 7 held out.
PROMPT_LINES = [f"{a} {b} {c}" for c in ("was", "is", "and", "the") for a in ("the", "a", "this", "I")
                for b in ("movie", "film", "plot", "story")]


def make_word_tokenizer(extra_specials: bool = True):
    """A word-level fast tokenizer over WORDS with an EOS/pad token; decode joins words with spaces."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<eos>", unk_token="<unk>")


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """A 2-layer random LlamaForCausalLM + word tokenizer saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = make_word_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg)
    path = tmp_path_factory.mktemp("tiny_policy")
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def tiny_gpt2():
    """A 2-layer random GPT2LMHeadModel (vocabulary 40) in eval mode: no dropout, so passes are comparable."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=2, n_head=2, n_positions=32,
                                      bos_token_id=0, eos_token_id=1)).eval()


def randomise_lora(peft_model, seed: int = 1, b_std: float = 0.5):
    """Give a fresh peft LoRA model non-zero updates (B starts at 0) from the test's own generator: A [r, in] as
    N(0, 1/in) (peft's Kaiming init's scale, up to √3), B as N(0, b_std²). peft's own init of A draws from the
    global RNG, which made the factors depend on which tests ran before."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_A" in n:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
            elif "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=gen) * b_std)
    return peft_model


def count_word_reward(word: str = "good"):
    """A toy reward on text: how often ``word`` appears in the completion."""

    def reward(prompts, completions):
        return [float(c.split().count(word)) for c in completions]

    return reward


@pytest.fixture(autouse=True)
def _release_output_locks():
    """Library calls (run_align, …) keep their output folders' locks until the process ends, as the CLI's
    ``main`` does not run around them: drop them after each test, so that a later subprocess may use a folder."""
    yield
    import sys

    outdir = sys.modules.get("warprl.commands.outdir")
    if outdir is not None:
        outdir.release_all()
