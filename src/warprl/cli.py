"""`warprl` command line: parse, validate, call the library, map known errors to exit code 2.

Every command's flags are generated from its config dataclass (warprl.config, through
warprl.commands.flags), so YAML keys and flags are the same names. Each handler imports its command module
when it runs: importing them all up front (torch, transformers) takes ~4.8 s against 0.2 s for this module,
and `warprl --help` should answer at once. Exit codes: 0 success, 2 bad input or refused operation (one line on stderr), 1 a bug.
With ``--json`` a command prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable

from warprl import config as C
from warprl.commands import outdir
from warprl.commands.flags import NOTES as notes
from warprl.commands.flags import add_arguments, config_from_args
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

    cfg: C.GenerateConfig = config_from_args(C.GenerateConfig, args)
    if not cfg.prompt:
        raise UserError("generate needs at least one --prompt TEXT")
    if any(not p.strip() for p in cfg.prompt):
        raise UserError("--prompt must not be empty")
    device = pick_device(cfg.device)
    model, tok = load_policy(cfg.policy, device=device)
    scfg = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                          top_k=cfg.top_k, engine=cfg.engine)
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

    cfg: C.DataInspectConfig = config_from_args(C.DataInspectConfig, args)
    tok = None
    if cfg.policy:
        from warprl.models import load_policy

        _, tok = load_policy(cfg.policy)
    info = data.inspect(cfg.path, tokenizer=tok, n_tokens=cfg.prompt_tokens, seed=cfg.seed)
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

    cfg: C.AlignConfig = config_from_args(C.AlignConfig, args)
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
    from warprl.commands.evaluate import evaluate
    from warprl.eval.evaluate import METRIC_KEYS

    cfg: C.EvalConfig = config_from_args(C.EvalConfig, args)
    result = evaluate(cfg, progress=sys.stderr.isatty())
    if args.json:
        _print_json(result)
        return EXIT_OK
    keys = METRIC_KEYS + (("gold_mean",) if "gold_mean" in result else ())
    ci_of = {"reward_mean": "reward_ci", "kl_mean": "kl_ci", "judge_positive_rate": "judge_positive_rate_ci",
             "gold_mean": "gold_ci"}
    rows = [{"metric": k, "value": f"{result[k]:.4f}",
             "95% interval": (f"[{result[ci_of[k]][0]:.4f}, {result[ci_of[k]][1]:.4f}]" if ci_of.get(k) in result
                              else "")} for k in keys]
    print(f"{cfg.policy} vs SFT {cfg.sft}: {result['n_prompts']} held-out prompts × {cfg.samples_per_prompt} "
          f"samples, reward {cfg.reward}, judge {cfg.judge}" + (f", gold {cfg.gold}" if cfg.gold else "") +
          " (intervals: bootstrap over prompts)\n")
    print(_table(rows, ["metric", "value", "95% interval"]))
    for smp in result["samples"][:3]:
        print(f"\n  {smp['prompt']} ⟶{smp['completion']}\n    (reward {smp['reward']:.2f}, judge {smp['judge']:+.2f})")
    return EXIT_OK


def cmd_pareto(args) -> int:
    from warprl.commands.evaluate import pareto

    cfg: C.ParetoConfig = config_from_args(C.ParetoConfig, args)
    summary = pareto(cfg)
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
            ci = c.get("mean_delta_ci")
            print(f"\n{c['a']} vs {c['b']}: mean Δreward {c['mean_delta']:+.3f} over {c['matched']} matched KL values"
                  + (f", 95% interval [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")
                  + f": {c.get('verdict', 'no interval')}")
    print(f"\nreport: {summary['report']}\nplot:   {summary['plot']}")
    return EXIT_OK


def cmd_quickstart(args) -> int:
    from warprl.commands.quickstart import print_summary, run_quickstart

    cfg: C.QuickstartConfig = config_from_args(C.QuickstartConfig, args)
    summary = run_quickstart(cfg)
    print_summary(summary)
    if args.json:
        _print_json(summary)
    return EXIT_OK


def cmd_reward_train(args) -> int:
    from warprl.commands.reward import train

    cfg: C.RewardTrainConfig = config_from_args(C.RewardTrainConfig, args)
    metrics = train(cfg)
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
    from warprl.commands.reward import evaluate

    cfg: C.RewardEvalConfig = config_from_args(C.RewardEvalConfig, args)
    result = evaluate(cfg, progress=sys.stderr.isatty() and not args.json)
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
    from warprl.commands.reward import score

    cfg: C.RewardScoreConfig = config_from_args(C.RewardScoreConfig, args)
    result = score(cfg)
    if args.json:
        _print_json(result)
        return EXIT_OK
    for row in result["scores"]:
        print(f"{row['reward']:+.4f}\t{row['text']}")
    return EXIT_OK


# sft (warprl.sft, warprl.commands.sft) ---------------------------------------------------------------- sft-cli
def cmd_sft(args) -> int:
    from warprl.commands.sft import run_sft

    cfg: C.SFTConfig = config_from_args(C.SFTConfig, args)
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

    cfg: C.SFTEvalConfig = config_from_args(C.SFTEvalConfig, args)
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
        add_arguments(p, cfg_cls, exclude=exclude)
    if json_flag:
        p.add_argument("--json", action="store_true", help="print one JSON object as the last line of stdout")
    p.set_defaults(handler=handler, config_class=cfg_cls)
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
    _sub(data_sub, "inspect", "counts, label balance, example prompts and pairs", cmd_data_inspect,
         C.DataInspectConfig)

    # reward (warprl.commands.reward) --------------------------------------------------------- reward-cli
    reward_p = sub.add_parser("reward", help="train, evaluate and query reward models")
    reward_sub = reward_p.add_subparsers(dest="reward_command", metavar="SUBCOMMAND", parser_class=_Parser)
    _sub(reward_sub, "train", "Bradley–Terry training of a reward model on (positive, negative) review pairs",
         cmd_reward_train, C.RewardTrainConfig)
    _sub(reward_sub, "eval", "pairwise accuracy, margin and reward moments on preference pairs", cmd_reward_eval,
         C.RewardEvalConfig)
    _sub(reward_sub, "score", "the reward of each TEXT (the whole text is judged)", cmd_reward_score,
         C.RewardScoreConfig)
    # align (warprl.commands.align) ------------------------------------------------------------ align-cli
    _sub(sub, "align", "fine-tune a policy with REINFORCE, RLOO or WARP on r − β·KL", cmd_align, C.AlignConfig)
    # evaluate, pareto, quickstart (warprl.commands) ------------------------------------------ evaluate-cli
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
    except OSError as e:  # the file system refused (a write outside warprl.io, a folder we may not create, …)
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        code = EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        code = 130
    finally:
        outdir.release_all()  # the output folders' one-writer locks end with the command
    sys.stdout.flush()
    if code != EXIT_BAD_INPUT:
        for note in notes:
            print(note, file=sys.stderr)
    notes.clear()
    return code


def entry() -> None:  # pragma: no cover - console script wrapper
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from warprl.heap import keep_freed_memory

    keep_freed_memory()  # before any tensor: large blocks come from the heap and are reused (warprl.heap)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # our own progress bars and messages say what is happening
    hf_logging.disable_progress_bar()
    sys.exit(main())
