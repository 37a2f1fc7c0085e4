"""`warprl` command line: parse, validate, call the library, map known errors to exit code 2.

Every command's flags are generated from its config dataclass (warprl.config), so YAML keys and flags are
the same names. Exit codes: 0 success, 2 bad input or refused operation (one line on stderr), 1 a bug.
With ``--json`` a command prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from warprl import config as C
from warprl.errors import UserError

EXIT_OK, EXIT_BUG, EXIT_BAD_INPUT = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line with exit code 2 (its default prints the usage)."""

    def error(self, message: str):  # noqa: D401
        raise UserError(f"{self.prog}: {message}")


def _print_json(obj) -> None:
    print(json.dumps(obj, default=str))


def _table(rows: list[dict], keys: list[str]) -> str:
    widths = {k: max(len(k), *(len(str(r.get(k, ""))) for r in rows)) for k in keys}
    lines = ["  ".join(k.ljust(widths[k]) for k in keys), "  ".join("-" * widths[k] for k in keys)]
    lines += ["  ".join(str(r.get(k, "")).ljust(widths[k]) for k in keys) for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- commands


def cmd_models(args) -> int:
    from warprl.models import cache_dir, installed_aliases

    rows = installed_aliases()
    if args.json:
        _print_json({"aliases": rows, "cache_dir": str(cache_dir())})
    else:
        print(_table(rows, ["alias", "kind", "installed", "converted_cache", "description"]))
        print(f"\nGGUF conversion cache: {cache_dir()} (set WARPRL_CACHE to move it)")
    return EXIT_OK


def cmd_generate(args) -> int:
    from warprl.models import load_policy, pick_device
    from warprl.rl.rollout import SamplingConfig, sample

    cfg: C.GenerateConfig = C.config_from_args(C.GenerateConfig, args)
    if not cfg.prompt:
        raise UserError("generate needs at least one --prompt TEXT")
    if any(not p.strip() for p in cfg.prompt):
        raise UserError("--prompt must not be empty")
    device = pick_device(cfg.device)
    model, tok = load_policy(cfg.policy, device=device)
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k)
    roll = sample(model, tok, cfg.prompt, scfg, k=cfg.num_samples, bf16=False, generator_seed=cfg.seed)
    results = [{"prompt": p, "completion": c} for p, c in zip(roll.prompts, roll.completions, strict=True)]
    for r in results:
        print(f"\033[1m{r['prompt']}\033[0m{r['completion']}" if sys.stdout.isatty() else
              f"{r['prompt']} ⟶{r['completion']}")
    if args.json:
        _print_json({"policy": cfg.policy, "samples": results})
    return EXIT_OK


def cmd_data_inspect(args) -> int:
    from warprl import data

    tok = None
    if args.policy:
        from warprl.models import load_policy

        _, tok = load_policy(args.policy)
    C.parse_prompt_tokens(args.prompt_tokens)
    info = data.inspect(args.path, tokenizer=tok, n_tokens=args.prompt_tokens, seed=args.seed)
    if args.json:
        _print_json(info)
        return EXIT_OK
    print(f"{info['source']}: {info['rows']} reviews, columns {', '.join(info['columns'])}, "
          f"{info['words_mean']} words on average")
    if "labels" in info:
        print("labels: " + ", ".join(f"{k}: {v}" for k, v in info["labels"].items()))
        print(f"preference pairs per epoch: {info['pairs_per_epoch']}" + (
            f" ({info['pairs_note']})" if info.get("pairs_note") else ""))
        for p in info.get("example_pairs", []):
            print(f"  chosen:   {p['chosen'][:100]}…\n  rejected: {p['rejected'][:100]}…")
    for p in info.get("example_prompts", []):
        print(f"  prompt: {p!r}")
    return EXIT_OK


def cmd_align(args) -> int:
    from warprl.commands.align import run_align

    cfg: C.AlignConfig = C.config_from_args(C.AlignConfig, args)
    summary = run_align(cfg)
    if args.json:
        _print_json(summary)
    else:
        print(f"done: final policy in {summary['final']}")
    return EXIT_OK


def _without_samples(obj):
    """A copy of a result for --json without the per-sample lists (they stay in the files)."""
    if isinstance(obj, dict):
        return {k: _without_samples(v) for k, v in obj.items() if k != "samples"}
    if isinstance(obj, list):
        return [_without_samples(v) for v in obj]
    return obj


def cmd_evaluate(args) -> int:
    from warprl.eval.evaluate import METRIC_KEYS, run_evaluate

    cfg: C.EvalConfig = C.config_from_args(C.EvalConfig, args)
    result = run_evaluate(cfg, progress=sys.stderr.isatty())
    if args.json:
        _print_json(result)
        return EXIT_OK
    rows = [{"metric": k, "value": f"{result[k]:.4f}"} for k in METRIC_KEYS]
    print(f"{cfg.policy} vs SFT {cfg.sft}: {result['n_prompts']} held-out prompts × {cfg.samples_per_prompt} "
          f"samples, reward {cfg.reward}, judge {cfg.judge}\n")
    print(_table(rows, ["metric", "value"]))
    for smp in result["samples"][:3]:
        print(f"\n  {smp['prompt']} ⟶{smp['completion']}\n    (reward {smp['reward']:.2f}, judge {smp['judge']:+.2f})")
    return EXIT_OK


def cmd_pareto(args) -> int:
    from warprl.eval.pareto import run_pareto

    cfg: C.ParetoConfig = C.config_from_args(C.ParetoConfig, args)
    summary = run_pareto(cfg)
    if args.json:
        _print_json(_without_samples(summary))
        return EXIT_OK
    main = summary["series"][0]
    rows = [{"eta": f"{p['eta']:g}", "reward": f"{p['reward_mean']:.3f}", "KL": f"{p['kl_mean']:.2f}",
             "judge>0.05": f"{p['judge_positive_rate']:.0%}", "distinct_2": f"{p['distinct_2']:.2f}",
             "loops": f"{p['repetition_rate']:.0%}"} for p in main["points"]]
    print(main["name"])
    print(_table(rows, ["eta", "reward", "KL", "judge>0.05", "distinct_2", "loops"]))
    for c in summary["comparisons"]:
        if c["matched"]:
            print(f"\n{c['a']} vs {c['b']}: above at {c['a_above']} of {c['matched']} matched KL values "
                  f"(mean Δreward {c['mean_delta']:+.3f})")
    print(f"\nreport: {summary['report']}\nplot:   {summary['plot']}")
    return EXIT_OK


def cmd_quickstart(args) -> int:
    from warprl.commands.quickstart import print_summary, run_quickstart

    cfg: C.QuickstartConfig = C.config_from_args(C.QuickstartConfig, args)
    summary = run_quickstart(cfg)
    print_summary(summary)
    if args.json:
        _print_json(summary)
    return EXIT_OK


def cmd_reward_train(args) -> int:
    from warprl.reward import train_reward_model

    cfg: C.RewardTrainConfig = C.config_from_args(C.RewardTrainConfig, args)
    metrics = train_reward_model(cfg)
    if args.json:
        _print_json(metrics)
        return EXIT_OK
    v = metrics["val"]
    print(f"{metrics['mode']} {metrics['backbone']} ({metrics['pooling']} pooling), {metrics['train_reviews']} "
          f"training reviews, {metrics['train_seconds']:.0f} s")
    print(f"validation: pairwise accuracy {v['accuracy']:.2%} over {v['n_pairs']} pairs (all-pairs {v['auc']:.2%}), "
          f"mean margin {v['margin_mean']:.3f}")
    print(f"saved: {metrics['out']} (metrics.json beside the model)" +
          (f"; head: {metrics['export_head']}" if metrics.get("export_head") else ""))
    return EXIT_OK


def cmd_reward_eval(args) -> int:
    from warprl.reward import eval_reward

    if args.limit < 1 or args.batch_size < 1:
        raise UserError(f"--limit and --batch-size must be >= 1, got {args.limit} and {args.batch_size}")
    if not 0.0 < args.val_fraction < 1.0:
        raise UserError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    result = eval_reward(args.model, args.data, limit=args.limit, split=args.split, val_fraction=args.val_fraction,
                         seed=args.seed, device=args.device, batch_size=args.batch_size, bf16=args.bf16,
                         progress=sys.stderr.isatty() and not args.json)
    if args.json:
        _print_json(result)
        return EXIT_OK
    print(f"{result['model']} on {result['n_pairs']} pairs from {result['data']} (split {result['split']}):")
    print(f"  pairwise accuracy {result['accuracy']:.2%} (all-pairs {result['auc']:.2%}), "
          f"mean margin {result['margin_mean']:.4f}")
    print(f"  chosen   reward {result['chosen_mean']:+.4f} ± {result['chosen_std']:.4f}")
    print(f"  rejected reward {result['rejected_mean']:+.4f} ± {result['rejected_std']:.4f}")
    return EXIT_OK


def cmd_reward_score(args) -> int:
    from warprl.reward import load_reward

    if args.batch_size < 1:
        raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
    fn = load_reward(args.model, device=args.device, batch_size=args.batch_size, bf16=args.bf16)
    scores = fn.score_texts(args.text).tolist()
    if args.json:
        _print_json({"model": args.model, "scores": [{"text": t, "reward": s} for t, s in
                                                     zip(args.text, scores, strict=True)]})
        return EXIT_OK
    for t, s in zip(args.text, scores, strict=True):
        print(f"{s:+.4f}\t{t}")
    return EXIT_OK


# sft (warprl.sft, warprl.commands.sft) ---------------------------------------------------------------- sft-cli
def cmd_sft(args) -> int:
    from warprl.commands.sft import run_sft

    cfg: C.SFTConfig = C.config_from_args(C.SFTConfig, args)
    summary = run_sft(cfg)
    if args.json:
        _print_json(summary)
        return EXIT_OK
    print(f"done: {summary['steps']} steps, {summary['tokens_seen']} tokens in {summary['train_seconds']:.0f} s; "
          f"validation NLL {summary['val_nll_start']} → {summary['val_nll_end']}")
    print(f"merged model: {summary['final']}" + (f"\nLoRA adapter: {summary['adapter']}" if summary["adapter"] else ""))
    return EXIT_OK


def cmd_sft_eval(args) -> int:
    from warprl.commands.sft import run_sft_eval

    cfg: C.SFTEvalConfig = C.config_from_args(C.SFTEvalConfig, args)
    result = run_sft_eval(cfg, progress=sys.stderr.isatty() and not args.json)
    if args.json:
        _print_json(result)
        return EXIT_OK
    print(f"{result['policy']} on {result['texts']} texts of {result['data']} (split {result['split']}, "
          f"≤ {result['max_length']} tokens): NLL {result['nll_per_token']:.4f} per token, perplexity "
          f"{result['perplexity']:.2f}, {result['tokens']} tokens")
    return EXIT_OK


def add_sft_parsers(sub) -> None:
    """`warprl sft [flags]` trains; `warprl sft eval [flags]` measures the per-token NLL."""
    sft_p = _sub(sub, "sft", "supervised fine-tuning of a causal LM on text (full or LoRA); `sft eval`: per-token NLL",
                 cmd_sft, C.SFTConfig)
    sft_sub = sft_p.add_subparsers(dest="sft_command", metavar="SUBCOMMAND", parser_class=_Parser, required=False)
    _sub(sft_sub, "eval", "per-token NLL and perplexity of texts under a policy", cmd_sft_eval, C.SFTEvalConfig)
# ------------------------------------------------------------------------------------------------ sft-cli end


# ------------------------------------------------------------------------------------------------ parser

Handler = Callable[[argparse.Namespace], int]


def _sub(subparsers, name: str, help_text: str, handler: Handler, cfg_cls: type | None = None,
         json_flag: bool = True, exclude: tuple[str, ...] = ()) -> argparse.ArgumentParser:
    p = subparsers.add_parser(name, help=help_text, description=help_text,
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    if cfg_cls is not None:
        C.add_arguments(p, cfg_cls, exclude=exclude)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.set_defaults(handler=handler)
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="warprl", description="Align language models to a reward: REINFORCE, RLOO and WARP.")
    from warprl import __version__

    parser.add_argument("--version", action="version", version=f"warprl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _sub(sub, "models", "list the offline model aliases and whether their weights are installed", cmd_models)
    _sub(sub, "generate", "sample continuations from a policy", cmd_generate, C.GenerateConfig)

    data_p = sub.add_parser("data", help="inspect review data")
    data_sub = data_p.add_subparsers(dest="data_command", metavar="SUBCOMMAND", parser_class=_Parser)
    ins = _sub(data_sub, "inspect", "counts, label balance, example prompts and pairs", cmd_data_inspect)
    ins.add_argument("path", help="parquet/jsonl/csv file or folder, aclImdb/ folder, or hub dataset id")
    ins.add_argument("--policy", default="", help="tokenizer for example prompts (e.g. smollm2-135m)")
    ins.add_argument("--prompt-tokens", default="8", help="prompt length in policy tokens: N or LO-HI")
    ins.add_argument("--seed", type=int, default=0)

    # reward (warprl.reward) ------------------------------------------------------------------ reward-cli
    reward_p = sub.add_parser("reward", help="train, evaluate and query reward models")
    reward_sub = reward_p.add_subparsers(dest="reward_command", metavar="SUBCOMMAND", parser_class=_Parser)
    _sub(reward_sub, "train", "Bradley–Terry training of a reward model on (positive, negative) review pairs",
         cmd_reward_train, C.RewardTrainConfig)
    for name, help_text, handler in (
            ("eval", "pairwise accuracy, margin and reward moments on preference pairs", cmd_reward_eval),
            ("score", "the reward of each TEXT", cmd_reward_score)):
        rp = _sub(reward_sub, name, help_text, handler)
        rp.add_argument("--model", default="imdb-sentiment",
                        help="imdb-sentiment, vader, an RM folder (warprl reward train --out) or a hub id")
        rp.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
        rp.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
        rp.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=False, help="bf16 autocast")
        if name == "score":
            rp.add_argument("text", nargs="+", metavar="TEXT", help="text to score (the whole text is judged)")
            continue
        rp.add_argument("--data", required=True, help="labelled reviews: parquet/jsonl/csv file or folder, "
                        "aclImdb/ folder, or hub dataset id")
        rp.add_argument("--limit", type=int, default=1000, help="pairs to evaluate (N)")
        rp.add_argument("--split", choices=("all", "val"), default="all",
                        help="all reviews, or only the validation reviews `reward train` held out")
        rp.add_argument("--val-fraction", type=float, default=0.1, help="with --split val: as in reward train")
        rp.add_argument("--seed", type=int, default=0, help="pairing seed (and split seed, as in reward train)")
    # align (warprl.train / warprl.warp) --------------------------------------------------------- align-cli
    _sub(sub, "align", "fine-tune a policy with REINFORCE, RLOO or WARP on r − β·KL", cmd_align, C.AlignConfig)
    # evaluate, pareto, quickstart (warprl.evaluate / warprl.report) ------------------------- evaluate-cli
    _sub(sub, "evaluate", "reward, KL to the SFT policy, judge, diversity and loops on held-out prompts",
         cmd_evaluate, C.EvalConfig)
    _sub(sub, "pareto", "η sweep between the SFT and an aligned policy: reward–KL plot and report.md",
         cmd_pareto, C.ParetoConfig)
    _sub(sub, "quickstart", "the whole pipeline offline in minutes: WARP, evaluation, Pareto report (make demo)",
         cmd_quickstart, C.QuickstartConfig)
    add_sft_parsers(sub)  # sft-cli
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not getattr(args, "handler", None):
            parser.print_help()
            return EXIT_BAD_INPUT if argv is None and len(sys.argv) > 1 else EXIT_OK
        code = args.handler(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    sys.stdout.flush()
    return code


def entry() -> None:  # pragma: no cover - console script wrapper
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # our own progress bars and messages say what is happening
    hf_logging.disable_progress_bar()
    sys.exit(main())
