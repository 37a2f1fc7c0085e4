"""One settings dataclass per command, composed from the sections of :mod:`warprl.config.sections`."""

from __future__ import annotations

from dataclasses import dataclass

from warprl.config.sections import (
    EvalSettings,
    LoraSettings,
    OptimSettings,
    RLSettings,
    RunSettings,
    SamplingSettings,
    WarpSettings,
    _check_mu,
    _non_negative,
    _open_unit_interval,
    _positive,
    _unit_interval,
    parse_prompt_tokens,
    setting,
)
from warprl.errors import UserError

# The SFT policy every RL/evaluation command starts from or measures KL against by default: the bundled
# SmolLM2-135M-Instruct with the embedded IMDB LoRA adapter (`warprl sft`), so completions read as reviews, as
# lvwerra/gpt2-imdb's do in the reference setting. `warprl sft` itself starts from the plain base.
SFT_POLICY = "smollm2-imdb"
BASE_POLICY = "smollm2-135m"

# ------------------------------------------------------------------------------------------------ commands


@dataclass
class GenerateConfig(SamplingSettings):
    """`warprl generate`: sample continuations from a policy."""

    policy: str = setting(SFT_POLICY, "policy: alias, HF folder, .gguf file or hub id")
    prompt: list[str] = setting([], "prompt text (repeat the flag for several)")
    num_samples: int = setting(1, "completions per prompt")
    max_new_tokens: int = setting(40, "maximum new tokens per completion")
    seed: int = setting(0, "random seed")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")

    def validate(self) -> None:
        super().validate()
        _positive("num_samples", self.num_samples)


@dataclass
class DataInspectConfig:
    """`warprl data inspect PATH`: counts, label balance, example prompts and pairs."""

    path: str = setting("", "parquet/jsonl/csv file or folder, aclImdb/ folder, or hub dataset id", positional=True)
    policy: str = setting("", "tokenizer for example prompts (e.g. smollm2-135m)")
    prompt_tokens: str = setting("8", "prompt length in policy tokens: N or LO-HI")
    seed: int = setting(0, "random seed of the example pairs and prompts")

    def validate(self) -> None:
        if not self.path:
            raise UserError("data inspect needs PATH (a file, folder or hub dataset id)")
        parse_prompt_tokens(self.prompt_tokens)


@dataclass
class RewardTrainConfig:
    """`warprl reward train`: Bradley–Terry training of a reward model on (chosen, rejected) pairs."""

    data: str = setting("", "review data: parquet/jsonl/csv file or folder, aclImdb/ folder, or hub dataset id")
    backbone: str = setting("minilm-l6", "encoder: alias, HF folder or hub id")
    out: str = setting("runs/reward", "output folder (an HF model folder)")
    freeze_backbone: bool = setting(False, "train only the head on cached pooled embeddings")
    pooling: str = setting("auto", "what the head reads: native (the model's own head, e.g. BERT's [CLS] pooler) or "
                           "mean (masked mean, L2-normalised); auto = mean with --freeze-backbone, else native",
                           choices=("auto", "native", "mean"))
    max_length: int = setting(256, "maximum tokens per review")
    batch_size: int = setting(16, "pairs per optimisation step")
    lr: float = setting(3e-5, "learning rate (use ~1e-2 with --freeze-backbone)")
    epochs: float = setting(1.0, "passes over the training pairs (fractions allowed)")
    max_pairs: int = setting(0, "cap on training pairs (0 = all)")
    warmup_ratio: float = setting(0.05, "share of steps with linear warmup")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    center_rewards: float = setting(0.0, "penalty coefficient on the squared mean reward (TRL's center_rewards_coefficient)")
    max_grad_norm: float = setting(1.0, "gradient clipping in full fine-tuning (0 = off)")
    disable_dropout: bool = setting(True, "no dropout in full fine-tuning (TRL's RewardConfig default; 2x faster on a CPU)")
    init_head: str = setting("", "start the head from a bare head folder, e.g. the embedded imdb-sentiment "
                             "(linear probe, then fine-tune: LP-FT); needs mean pooling")
    val_fraction: float = setting(0.1, "share of reviews held out for validation")
    val_pairs: int = setting(1000, "validation pairs evaluated at the end")
    seed: int = setting(0, "random seed")
    bf16: bool = setting(True, "bf16 autocast (fp32 master weights)")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")
    cache_embeddings: bool = setting(True, "with --freeze-backbone keep the embeddings on disk (in WARPRL_CACHE)")
    export_head: str = setting("", "with --freeze-backbone also write the bare head (head.safetensors + config.json) here")
    overwrite: bool = setting(False, "replace an existing model in --out")
    progress: bool = setting(True, "show progress bars")

    def validate(self) -> None:
        if not self.data:
            raise UserError("reward train needs --data (a file, folder or hub dataset id)")
        _positive("max_length", self.max_length)
        _positive("batch_size", self.batch_size)
        _positive("lr", self.lr)
        _positive("epochs", self.epochs)
        _non_negative("max_pairs", self.max_pairs)
        _unit_interval("warmup_ratio", self.warmup_ratio)
        _non_negative("weight_decay", self.weight_decay)
        _non_negative("center_rewards", self.center_rewards)
        _non_negative("max_grad_norm", self.max_grad_norm)
        _positive("val_pairs", self.val_pairs)
        _open_unit_interval("val_fraction", self.val_fraction)


@dataclass
class RewardScorerSettings:
    """Which reward model scores, and how; shared by `reward eval` and `reward score`."""

    model: str = setting("imdb-sentiment", "imdb-sentiment, vader, an RM folder (warprl reward train --out) or a hub id")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")
    batch_size: int = setting(32, "texts per forward pass")
    bf16: bool = setting(False, "bf16 autocast")


@dataclass
class RewardEvalConfig(RewardScorerSettings):
    """`warprl reward eval`: pairwise accuracy, margin and reward moments on preference pairs."""

    data: str = setting("", "labelled reviews: parquet/jsonl/csv file or folder, aclImdb/ folder, or hub dataset id")
    limit: int = setting(1000, "pairs to evaluate (N)")
    split: str = setting("all", "all reviews, or only the validation reviews `reward train` held out",
                         choices=("all", "val"))
    val_fraction: float = setting(0.1, "with --split val: as in reward train")
    seed: int = setting(0, "pairing seed (and split seed, as in reward train)")

    def validate(self) -> None:
        if not self.data:
            raise UserError("reward eval needs --data (labelled reviews: a file, folder or hub dataset id)")
        if self.limit < 1 or self.batch_size < 1:
            raise UserError(f"--limit and --batch-size must be >= 1, got {self.limit} and {self.batch_size}")
        _open_unit_interval("val_fraction", self.val_fraction)


@dataclass
class RewardScoreConfig(RewardScorerSettings):
    """`warprl reward score`: the reward of each TEXT (the whole text is judged)."""

    text: list[str] = setting([], "texts to score (the positional TEXT arguments)", positional=True)

    def validate(self) -> None:
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {self.batch_size}")
        if not self.text:
            raise UserError("reward score needs at least one TEXT")


@dataclass
class AlignConfig(SamplingSettings, OptimSettings, RLSettings, WarpSettings, LoraSettings, RunSettings):
    """`warprl align`: REINFORCE, RLOO or WARP on a KL-regularised reward r − β·KL."""

    method: str = setting("rloo", "RL method", choices=("reinforce", "rloo", "warp"))
    inner: str = setting("rloo", "estimator inside each WARP run", choices=("reinforce", "rloo"))
    policy: str = setting(SFT_POLICY, "initial (SFT) policy: alias, HF folder, .gguf or hub id")
    reward: str = setting("imdb-sentiment", "reward: alias (imdb-sentiment, vader), RM folder or hub id")
    prompts: str = setting("builtin", "prompts: builtin, a data file/folder, a .txt (one per line) or hub id")
    prompt_tokens: str = setting("8", "prompt length in policy tokens: N, or a range such as 5-15")
    seed: int = setting(0, "random seed (each run derives its own from it)")
    checkpoint_every: int = setting(10, "steps between checkpoints (0 = none; a finished run keeps only its weights)")
    out: str = setting("runs/align", "output folder")
    resume: bool = setting(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = setting(False, "replace a finished run in --out")
    progress: bool = setting(True, "show progress bars")
    tensorboard: bool = setting(False, "also log to TensorBoard (needs the tensorboard extra)")

    def validate(self) -> None:
        RLSettings.validate(self)
        uses_rloo = self.method == "rloo" or (self.method == "warp" and self.inner == "rloo")
        if uses_rloo and self.k < 2:
            raise UserError(f"RLOO needs --k >= 2 samples per prompt, got {self.k}")
        OptimSettings.validate(self)
        SamplingSettings.validate(self)
        if self.min_new_tokens > self.max_new_tokens:
            raise UserError("--min-new-tokens is larger than --max-new-tokens")
        WarpSettings.validate(self)
        LoraSettings.validate(self)
        _non_negative("checkpoint_every", self.checkpoint_every)
        parse_prompt_tokens(self.prompt_tokens)


@dataclass
class EvalConfig(EvalSettings):
    """`warprl evaluate`: reward, KL to the SFT policy, judge and diversity on held-out prompts."""

    policy: str = setting(SFT_POLICY, "policy to evaluate")
    sft: str = setting(SFT_POLICY, "reference (SFT) policy for the KL and NLL")


@dataclass
class ParetoConfig(EvalSettings):
    """`warprl pareto`: sweep θ_η = (1−η)·θ_sft + η·θ_final, evaluate each point, plot reward against KL."""

    sft: str = setting(SFT_POLICY, "SFT policy θ_sft (η = 0)")
    final: str = setting("", "aligned policy θ_final (η = 1): `warprl align` output or HF folder; A,B,C = seeds")
    baseline: list[str] = setting([], "another `warprl align` run as its own series (repeat; A,B,C = seeds)")
    sweep_baselines: bool = setting(False, "sweep η for every baseline as well (a curve per run, not one point)")
    eta_steps: int = setting(10, "η grid 0, 1/N, …, 1 (N = 10: steps of 0.1)")
    include_slerp: bool = setting(True, "also evaluate the last WARP SLERP (final_slerp/) when the run has one")
    out: str = setting("runs/pareto", "output folder: report.md, pareto.png, pareto.json, results.md")
    samples_shown: int = setting(2, "sample generations per point in report.md")
    readme: str = setting("", "also put the results into this README between <!-- results:start/end --> markers")
    progress: bool = setting(True, "show progress bars")

    def validate(self) -> None:
        if not self.final:
            raise UserError("pareto needs --final DIR (an output folder of `warprl align` or an HF model folder)")
        super().validate()
        _positive("eta_steps", self.eta_steps)
        _non_negative("samples_shown", self.samples_shown)


@dataclass
class QuickstartConfig(WarpSettings, RunSettings):
    """`warprl quickstart` (`make demo`): WARP on the embedded defaults, evaluation before/after, Pareto sweep.

    The defaults are sized for a 2-core CPU in about 5 minutes: 268 s in bf16 on an AMD EPYC with AVX512-BF16,
    where the earlier T=25, lr 5e-5, 11-point sweep took 583 s and reached the same front at matched KL, only
    further along it (benchmarks/bench_quickstart.py --reference; both on the smollm2-imdb adapter before the
    950 k-token one, with which the quickstart took 248 s: RESULTS.md "Quickstart (make demo)"). The
    WARP run is an `align` run (:func:`align_config`) and the evaluation a `pareto` sweep (:func:`pareto_config`).
    """

    out: str = setting("runs/quickstart", "output folder: final/, report.md, pareto.png, summary.json")
    policy: str = setting(SFT_POLICY, "SFT policy")
    reward: str = setting("imdb-sentiment", "reward model or alias")
    judge: str = setting("vader", "independent judge reward (never trained on)")
    prompts: str = setting("builtin", "training prompts and held-out evaluation prompts")
    steps: int = setting(10, "RL steps T per run")
    batch_size: int = setting(8, "prompts per RL step")
    k: int = setting(2, "samples per prompt (RLOO)")
    lr: float = setting(1e-4, "learning rate (a small policy needs more than the reference 1e-5 to move within "
                        "minutes; 1.5e-4 gave a front below this one's)")
    beta: float = setting(0.05, "KL coefficient β")
    mu: float = setting(0.01, "EMA anchor rate μ")
    max_new_tokens: int = setting(24, "completion tokens, in training and evaluation")
    n_prompts: int = setting(32, "held-out prompts per evaluation")
    samples_per_prompt: int = setting(2, "completions per held-out prompt")
    eta_steps: int = setting(5, "Pareto η grid 0, 1/N, …, 1")
    seed: int = setting(0, "random seed of the WARP run (evaluation always uses seed 1234)")
    readme: str = setting("", "also put the results into this README between <!-- results:start/end --> markers")
    overwrite: bool = setting(False, "replace --out even if it holds something other than a previous quickstart")
    progress: bool = setting(True, "show progress bars")

    def validate(self) -> None:
        for name in ("iterations", "runs", "steps", "batch_size", "max_new_tokens", "n_prompts",
                     "samples_per_prompt", "eta_steps", "lr"):
            _positive(name, getattr(self, name))
        if self.k < 2:
            raise UserError(f"quickstart uses RLOO inside WARP: --k must be >= 2, got {self.k}")
        _non_negative("beta", self.beta)
        _check_mu(self.mu)
        WarpSettings.validate(self)


@dataclass
class SFTConfig:
    """`warprl sft`: supervised fine-tuning of a causal LM on text (full or LoRA), the first stage of the pipeline."""

    policy: str = setting(BASE_POLICY, "model to fine-tune: alias, HF folder, .gguf or hub id")
    data: str = setting("", "texts: parquet/jsonl/csv file or folder, aclImdb/ folder, or hub dataset id ('text' column)")
    val_data: str = setting("", "validation texts from another source (its held-out split); empty: the held-out split of --data")
    val_fraction: float = setting(0.1, "share of the texts held out for validation (seeded by --seed)")
    val_limit: int = setting(200, "validation texts evaluated every --eval-every steps")
    lora_r: int = setting(16, "LoRA rank (use --no-lora for a full fine-tune)")
    lora: bool = setting(True, "train a LoRA adapter (peft) instead of every weight")
    lora_alpha: float = setting(32.0, "LoRA scaling alpha (the update is alpha/r · B·A)")
    lora_dropout: float = setting(0.0, "dropout on the LoRA input (> 0 draws a mask per adapted layer: 1.5x slower steps on a CPU)")
    lora_targets: str = setting("all-linear", "layers that get an adapter: all-linear (attention + MLP) or names, e.g. q_proj,v_proj")
    attn_implementation: str = setting("auto", "attention kernel while training: auto (eager for a bf16 compute "
                                       "copy on a CPU while its saved attention stays under 1 GiB, else sdpa), "
                                       "sdpa or eager (faster backward on a CPU; memory grows with length²)",
                                       choices=("auto", "sdpa", "eager"))
    packing: bool = setting(True, "pack texts into full --max-length blocks (else length-bucketed padded batches)")
    max_length: int = setting(256, "tokens per block (packing) or per text (bucketing)")
    batch_size: int = setting(8, "blocks/texts per micro-batch")
    grad_accum: int = setting(1, "micro-batches per optimiser step")
    lr: float = setting(5e-4, "peak learning rate (linear warmup, then cosine to 0)")
    warmup_ratio: float = setting(0.05, "share of the steps with linear warmup")
    weight_decay: float = setting(0.0, "AdamW weight decay")
    max_grad_norm: float = setting(1.0, "gradient clipping (0 = off)")
    max_tokens: int = setting(0, "train on this many target tokens (0: use --epochs)")
    epochs: float = setting(1.0, "passes over the training texts when --max-tokens is 0 (fractions allowed)")
    max_texts: int = setting(0, "cap on training texts read (0 = all)")
    eval_every: int = setting(50, "steps between validation NLL measurements (0 = only at the start and end)")
    checkpoint_every: int = setting(50, "steps between checkpoints (0 = only at the end)")
    adapter_dtype: str = setting("fp32", "storage dtype of the saved LoRA adapter", choices=("fp32", "bf16", "fp16"))
    seed: int = setting(0, "random seed (split, data order, LoRA init, dropout)")
    bf16: bool = setting(True, "bf16 compute copy with fp32 master weights")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")
    out: str = setting("runs/sft", "output folder: final/ (merged HF model), adapter/ (LoRA), metrics.jsonl")
    resume: bool = setting(False, "continue the run in --out from its last checkpoint")
    overwrite: bool = setting(False, "replace a finished run in --out")
    progress: bool = setting(True, "show a progress bar")

    def validate(self) -> None:
        if not self.data:
            raise UserError("sft needs --data (a file, folder or hub dataset id with a 'text' column)")
        if self.lora:
            _positive("lora_r", self.lora_r)
            _positive("lora_alpha", self.lora_alpha)
            if not 0.0 <= self.lora_dropout < 1.0:
                raise UserError(f"--lora-dropout must be in [0, 1), got {self.lora_dropout}")
        for name in ("max_length", "batch_size", "grad_accum", "lr", "epochs", "val_limit"):
            _positive(name, getattr(self, name))
        if self.max_length < 2:
            raise UserError(f"--max-length must be >= 2, got {self.max_length}")
        for name in ("max_tokens", "max_texts", "eval_every", "checkpoint_every", "weight_decay", "max_grad_norm"):
            _non_negative(name, getattr(self, name))
        _unit_interval("warmup_ratio", self.warmup_ratio)
        _open_unit_interval("val_fraction", self.val_fraction)


@dataclass
class SFTEvalConfig:
    """`warprl sft eval`: per-token NLL and perplexity of texts under a policy."""

    policy: str = setting(SFT_POLICY, "policy: alias, HF folder, .gguf, `warprl sft` output folder or hub id")
    data: str = setting("", "texts: parquet/jsonl/csv file or folder, aclImdb/ folder, or hub dataset id")
    split: str = setting("val", "all texts, or the validation split `warprl sft` holds out (same --val-fraction, --seed)",
                         choices=("all", "val"))
    val_fraction: float = setting(0.1, "with --split val: as in `warprl sft`")
    limit: int = setting(200, "texts evaluated (seeded sample; 0 = all)")
    max_length: int = setting(128, "tokens per text (longer texts are truncated)")
    batch_size: int = setting(16, "texts per forward pass")
    seed: int = setting(0, "split and sampling seed")
    bf16: bool = setting(True, "score with a bf16 copy of the model")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")

    def validate(self) -> None:
        if not self.data:
            raise UserError("sft eval needs --data (a file, folder or hub dataset id with a 'text' column)")
        _non_negative("limit", self.limit)
        _positive("batch_size", self.batch_size)
        if self.max_length < 2:
            raise UserError(f"--max-length must be >= 2, got {self.max_length}")
        _open_unit_interval("val_fraction", self.val_fraction)


