"""What the WARP ablation trains and evaluates per seed (``bench_warp_ablation.py``): runs, candidates, shared runs.

Weights specs of a candidate: ``RUN`` (its final/), ``RUN:slerp`` (final_slerp/), ``RUN:iter<i>`` (θ_init after
iteration i), ``RUN:slerp<i>`` (iteration i's SLERP), ``RUN:merge:<op>:<m>`` (a merge of the first m runs of
iteration 1).

Shared runs: a WARP run is a function of (seed, iteration, run index, θ_init, step settings) alone; M, η and I do
not enter it (``tests/commands/test_align_warp.py`` checks it). So WARP configs that agree on the step settings
train identical runs in iteration 1, where θ_init is θ_sft: the first config to train them lends its first runs to
the later ones, whose folders start with hard links to them (:data:`Plan.shares`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

PAPER = dict(inner="reinforce", beta=0.1, mu=0.01, eta=0.3, lam=0.5)
TASK = dict(inner="rloo", mu=0.01, eta=0.5, lam=0.5)
I1 = "I=1 (iteration 1's SLERP, swept)"  # part c: θ_init after I = 1 is a point of this sweep for any η

# The settings a WARP run's training reads (besides the seed and θ_init); everything else is M, η, I, λ.
RUN_KEYS = ("method", "steps", "beta", "inner", "mu")


@dataclass
class Plan:
    """What one seed trains (name → align settings) and evaluates (name → weights, group)."""

    runs: dict[str, dict] = field(default_factory=dict)
    candidates: dict[str, tuple[str, str]] = field(default_factory=dict)  # name → (weights spec, part)
    shares: dict[str, tuple[str, int]] = field(default_factory=dict)  # borrower → (lender, runs of iteration 1)


def share_iteration_one(runs: dict[str, dict]) -> dict[str, tuple[str, int]]:
    """Borrower → (lender, n): the borrower's first n runs of iteration 1 are the lender's, trained earlier."""
    shares, lenders = {}, {}
    for name, run in runs.items():
        if run.get("method") != "warp":
            continue
        key = tuple(run.get(k) for k in RUN_KEYS)
        if key in lenders:
            lender = lenders[key]
            shares[name] = (lender, min(run["runs"], runs[lender]["runs"]))
        else:
            lenders[key] = name
    return shares


def plan_for(parts: list[str], T: int) -> Plan:
    """The runs and candidates of one seed (see the benchmark's docstring for the parts)."""
    p = Plan()
    S = 4 * T  # I·M·T of WARP I = 2, M = 2: the compute of every single-run baseline
    if "d" in parts or "a" in parts:
        for beta in ((0.01, 0.1) if "d" in parts else (0.1,)):
            for m in ("rloo", "reinforce"):
                p.runs[f"{m}_sft_b{beta}"] = dict(method=m, anchor="sft", steps=S, beta=beta)
    if "d" in parts or "c" in parts:
        p.runs["warp_task_b0.1_eta0.5"] = dict(method="warp", iterations=3 if "c" in parts else 2, runs=2, steps=T,
                                               beta=0.1, **TASK)
    if "d" in parts:
        p.runs["warp_task_b0.01_eta0.5"] = dict(method="warp", iterations=2, runs=2, steps=T, beta=0.01, **TASK)
        p.runs["warp_paper"] = dict(method="warp", iterations=2, runs=2, steps=T, **PAPER)
        for beta in (0.01, 0.1):
            w = f"warp_task_b{beta}_eta0.5"
            spec = w if beta == 0.01 or "c" not in parts else f"{w}:iter2"  # I = 2 of the I = 3 run
            p.candidates[f"task β={beta}: WARP final (LITI)"] = (spec, "d")
            p.candidates[f"task β={beta}: WARP last SLERP"] = (w + (":slerp2" if "c" in parts and beta == 0.1 else
                                                                   ":slerp"), "d")
            p.candidates[f"task β={beta}: RLOO"] = (f"rloo_sft_b{beta}", "d")
            p.candidates[f"task β={beta}: REINFORCE"] = (f"reinforce_sft_b{beta}", "d")
        p.candidates["paper: WARP last SLERP (its output)"] = ("warp_paper:slerp", "d")
        p.candidates["paper: WARP final (LITI)"] = ("warp_paper", "d")
        p.candidates["paper: REINFORCE"] = ("reinforce_sft_b0.1", "d")
        p.candidates["paper: RLOO"] = ("rloo_sft_b0.1", "d")
    if "a" in parts:
        for m, name in (("rloo", "RLOO"), ("reinforce", "REINFORCE")):
            p.runs[f"{m}_ema_b0.1"] = dict(method=m, anchor="ema", mu=0.01, steps=S, beta=0.1)
            p.candidates[f"{name} SFT anchor"] = (f"{m}_sft_b0.1", "a")
            p.candidates[f"{name} EMA anchor"] = (f"{m}_ema_b0.1", "a")
    if "b" in parts:
        p.runs["warp_m4"] = dict(method="warp", iterations=1, runs=4, steps=T, beta=0.1, **TASK)
        p.runs.setdefault("rloo_ema_b0.1", dict(method="rloo", anchor="ema", mu=0.01, steps=S, beta=0.1))
        p.candidates["one run (T steps)"] = ("warp_m4:merge:one:1", "b")
        for op in ("lerp", "slerp"):
            for m in (2, 4):
                p.candidates[f"{op.upper()} M={m}"] = (f"warp_m4:merge:{op}:{m}", "b")
        p.candidates["one RLOO run of 4T steps, EMA anchor"] = ("rloo_ema_b0.1", "b")
    if "c" in parts:
        p.runs["warp_task_b0.1_eta0.3"] = dict(method="warp", iterations=3, runs=2, steps=T, beta=0.1,
                                               **{**TASK, "eta": 0.3})
        # θ_init after I = 1 is (1−η)·θ_sft + η·θ_slerp1: a point of iteration 1's SLERP swept towards θ_sft, the
        # same SLERP for both η. One candidate, the whole sweep, stands for both I = 1 fronts (each is a stretch
        # of it), and it is part b's SLERP M = 2 (the same two runs, shared).
        p.candidates[I1] = ("warp_task_b0.1_eta0.5:slerp1", "c")
        for eta in (0.3, 0.5):
            for i in (2, 3):
                p.candidates[f"η={eta} I={i}"] = (f"warp_task_b0.1_eta{eta}:iter{i}", "c")
    p.shares = share_iteration_one(p.runs)
    if p.shares.get("warp_m4", ("", 0))[1] >= 2:  # part b's SLERP M = 2 *is* the lender's iteration-1 SLERP
        lender = p.shares["warp_m4"][0]
        if p.runs[lender]["runs"] == 2 and p.runs[lender]["lam"] == 0.5:
            p.candidates["SLERP M=2"] = (f"{lender}:slerp1", "b")
    return p


def run_steps(run: dict) -> int:
    return run["steps"] * run.get("iterations", 1) * run.get("runs", 1)


def shared_steps(plan: Plan) -> int:
    """The RL steps a seed does not train because a borrower's runs are hard links to a lender's."""
    return sum(n * plan.runs[b]["steps"] for b, (_, n) in plan.shares.items())


def needed_files(plan: Plan, name: str, evaluated: set[str] = frozenset()) -> set[str]:
    """The files of run ``name`` (relative to its folder) that the candidates not yet ``evaluated`` read; the rest
    can go."""
    need: set[str] = set()
    for spec, _ in plan.candidates.values():
        run, _, rest = spec.partition(":")
        if run != name or spec in evaluated:
            continue
        if rest.startswith("merge"):
            need |= {"sft.safetensors"} | {f"iter_1/run_{j}/weights.safetensors" for j in range(1, 5)}
        elif rest.startswith("iter"):
            need.add(f"iter_{int(rest[4:])}/init.safetensors")
        elif rest.startswith("slerp") and rest != "slerp":
            need.add(f"iter_{int(rest[5:])}/slerp.safetensors")
    return need


def lent_files(plan: Plan, name: str) -> set[str]:
    """The files of run ``name`` that its borrowers link to (kept until every borrower has linked them)."""
    n = max((k for lender, k in plan.shares.values() if lender == name), default=0)
    return ({"sft.safetensors"} | {f"iter_1/run_{j}/weights.safetensors" for j in range(1, n + 1)}) if n else set()
