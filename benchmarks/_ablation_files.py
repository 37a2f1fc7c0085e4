"""What the WARP ablation keeps in its --out folder (``bench_warp_ablation.py``), so that a benchmark killed or
stopped at any point goes on where it stopped, in the same session or a later one, and never mixes settings.
One benchmark at a time writes to a folder (the commands' one-writer lock beside it).

    settings.json                  the policy, data, parts, sizes, precision and code (a digest) it was started
                                   with, compared on every rerun; the commit, date and machine, recorded
    gold_rm/                       the gold reward model (trained once)
    sft_point.json                 the SFT policy's evaluation: the η = 0 point of every sweep
    seed<s>/<run>/                 one `warprl align` folder per run, pruned to what a candidate still reads
    seed<s>/candidates/<spec>/     the weights of a candidate not yet evaluated (merges, iterations, SLERPs)
    seed<s>/evaluated/<spec>.json  a candidate's evaluated sweep (its points with their samples) and its settings

A run folder resumes as `warprl align --resume` does (whole runs for RLOO/REINFORCE, whole WARP runs); an
evaluated candidate is never evaluated again under the same settings, and once it is, the weights only it read
are deleted: the disk then holds each run's final/ plus one seed's work in progress. The report reads its input
back from the records (:func:`report_input`), also for the parts finished so far (:func:`complete_parts`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from _ablation_plan import Plan, lent_files, needed_files

from warprl.io import link_or_copy

SETTINGS_FILE = "settings.json"


def _plain(obj):
    """``obj`` as its JSON round trip (tuples become lists), so that a stored value compares equal to a new one."""
    return json.loads(json.dumps(obj, default=str))


def _differences(stored: dict, new: dict, prefix: str = "") -> list[str]:
    """'key: stored there, new now' for each (nested) key where two settings dicts differ."""
    said = []
    for k in sorted(stored.keys() | new.keys()):
        a, b = stored.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            said += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            said.append(f"{prefix}{k}: {a} there, {b} now")
    return said


def code_digest(root: Path) -> str:
    """SHA-256 over the files of ``root``/src/warprl and the ablation's plan: the code every number depends on. One
    --out folder is the work of one code version: a change, even a comment, asks for the code it was started with."""
    import hashlib

    h = hashlib.sha256()
    paths = [p for p in sorted((root / "src" / "warprl").rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
    for path in paths + [root / "benchmarks" / "_ablation_plan.py"]:
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def check_settings(out: Path, settings: dict, started: dict | None = None) -> None:
    """Record ``settings`` (and, not compared, ``started``: e.g. the commit) in a new --out folder; refuse
    (UserError) to go on in one started with other settings."""
    from warprl.errors import UserError
    from warprl.io import atomic_write_json

    path = out / SETTINGS_FILE
    if not path.is_file():
        atomic_write_json(path, _plain({**settings, "started": started or {}}))
        return
    stored = json.loads(path.read_text())
    said = _differences({k: v for k, v in stored.items() if k != "started"}, _plain(settings))
    if said:
        raise UserError(f"{out} was started with other settings ({'; '.join(said)}; it was started with "
                        f"{stored.get('started') or 'nothing recorded'}): pass the same ones or a new --out")


def spec_name(spec: str) -> str:
    """A candidate spec as a file name (``RUN:merge:slerp:4`` → ``RUN_merge_slerp_4``)."""
    return spec.replace(":", "_")


def points_path(seed_dir: Path, spec: str) -> Path:
    return seed_dir / "evaluated" / f"{spec_name(spec)}.json"


def read_cached(path: Path, key: dict) -> dict | None:
    """The record stored at ``path`` (None if there is none). One stored under another ``key`` (the evaluation's
    settings) is refused, not redone: the weights it was read from are pruned, and mixing settings is no result."""
    from warprl.errors import UserError

    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    said = _differences(stored.get("key") or {}, _plain(key))
    if said:
        raise UserError(f"{path} was evaluated with other settings ({'; '.join(said)}): use a new --out")
    return stored["record"]


def write_cached(path: Path, key: dict, record: dict) -> None:
    from warprl.io import atomic_write_text

    atomic_write_text(path, json.dumps({"key": _plain(key), "record": record}, default=str))


def borrow_runs(lender: Path, out: Path, cfg, n: int) -> None:
    """Start (or complete) the WARP folder ``out`` with hard links to the first ``n`` runs of the lender's iteration
    1 and its θ_sft: the runs ``out`` would train are bit-identical to them (see ``_ablation_plan``). Idempotent: a
    run already finished in ``out`` is kept, a half-linked one (the benchmark was killed) is linked again."""
    from warprl.commands import outdir
    from warprl.io import digest_file
    from warprl.rl.warp import init_path, run_dir, run_finished

    if not (out / outdir.CONFIG_FILE).is_file():
        outdir.prepare(outdir.check(out, outdir.ALIGN, cfg=cfg), cfg)  # the folder and its config.yaml, as align
    sft = init_path(lender, 1)
    for src in (sft, digest_file(sft)):
        if not (out / src.name).exists():
            link_or_copy(src, out / src.name)
    for m in range(1, n + 1):
        src, dst = run_dir(lender, 1, m), run_dir(out, 1, m)
        if run_finished(dst):
            continue
        if not run_finished(src):
            raise RuntimeError(f"{src} is not a finished run: train {lender.name} before {out.name}")
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(src, dst, copy_function=link_or_copy)


def prune(plan: Plan, seed_dir: Path, evaluated: set[str] = frozenset()) -> float:
    """Delete the weight files of finished runs that no candidate still reads (a candidate in ``evaluated`` reads
    nothing: its sweep is cached), and the candidate folders of evaluated specs. Each weight file is 0.54 GB for
    SmolLM2-135M in fp32: unpruned, one seed of all four parts holds ≈ 37 GB. final/ and final_slerp/ stay.
    Returns the GB freed."""
    freed = 0
    for name in plan.runs:
        out = seed_dir / name
        if not (out / "summary.json").is_file():
            continue
        keep = needed_files(plan, name, evaluated)
        borrowers = [b for b, (lender, _) in plan.shares.items() if lender == name]
        if any(not (seed_dir / b / "summary.json").is_file() for b in borrowers):
            keep |= lent_files(plan, name)  # a borrower has yet to link them
        for f in [out / "weights.safetensors", out / "sft.safetensors", *out.glob("iter_*/*.safetensors"),
                  *out.glob("iter_*/run_*/weights.safetensors")]:
            if f.is_file() and f.relative_to(out).as_posix() not in keep:
                freed += _unlink(f)
        slerp = out / "final_slerp"  # the paper's output: once no candidate still reads it, final/ is the one kept
        if slerp.is_dir() and not any(s == f"{name}:slerp" and s not in evaluated for s, _ in plan.candidates.values()):
            freed += sum(_unlink(f) for f in slerp.glob("*.safetensors"))
            shutil.rmtree(slerp)
    for spec in evaluated:
        folder = seed_dir / "candidates" / spec_name(spec)
        if folder.is_dir():
            freed += sum(_unlink(f) for f in folder.iterdir() if f.is_file())
            folder.rmdir()
    return freed / 2**30


def _unlink(f: Path) -> int:
    """Delete ``f``; the bytes this frees (none while another hard link to it remains)."""
    st = f.stat()
    f.unlink()
    return st.st_size if st.st_nlink == 1 else 0


def weights_folder(seed_dir: Path, spec: str) -> Path:
    """An HF-style folder holding the weights a candidate spec names (merges are written once, under
    candidates/), with ``angle.json`` beside them where the spec is a merge of task vectors."""
    from warprl import merge
    from warprl.rl.warp import task_vector_stats

    name, _, rest = spec.partition(":")
    run = seed_dir / name
    if not rest:
        return run / "final"
    if rest == "slerp":
        return run / "final_slerp"
    folder = seed_dir / "candidates" / spec_name(spec)
    target = folder / "model.safetensors"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        if rest.startswith("iter"):
            link_or_copy(run / f"iter_{int(rest[4:])}" / "init.safetensors", target)
        elif rest.startswith("slerp"):
            idir = run / f"iter_{int(rest[5:])}"
            row = json.loads((idir / "iteration.json").read_text())  # its runs' angle
            angle = {k: v for k, v in row.items() if k.startswith("charts/task")}
            (folder / "angle.json").write_text(json.dumps(angle))
            link_or_copy(idir / "slerp.safetensors", target)  # last: a folder with its weights is complete
        else:  # merge:<op>:<m>
            _, op, m = rest.split(":")
            runs = [run / "iter_1" / f"run_{j}" / "weights.safetensors" for j in range(1, int(m) + 1)]
            if op == "one":
                link_or_copy(runs[0], target)
            else:
                stats = task_vector_stats(run / "sft.safetensors", runs)
                (folder / "angle.json").write_text(json.dumps(stats))
                merge.merge_files(run / "sft.safetensors", runs, target, op, lam=0.5 if int(m) == 2 else None)
    return folder


def angle_of(folder: Path) -> float | None:
    """The task vectors' mean pairwise angle (degrees) of a merged candidate, None for a run's own output."""
    path = folder / "angle.json"
    return json.loads(path.read_text()).get("charts/task_vector_angle_deg") if path.is_file() else None


def report_input(plan: Plan, per_seed: dict[int, dict[str, dict]], n_prompts: int) -> dict:
    """The report's input: candidate → per seed → points, candidate → angles, from the seeds' records."""
    results: dict[str, list[list[dict]]] = {}
    angles: dict[str, list[float]] = {}
    for records in per_seed.values():
        for name, (spec, _) in plan.candidates.items():
            results.setdefault(name, []).append(records[spec]["points"])
            if records[spec]["angle"] is not None:
                angles.setdefault(name, []).append(records[spec]["angle"])
    return {"results": results, "angles": angles, "n_prompts": n_prompts}


def compute_minutes(plan: Plan, out: Path, seeds: list[int], per_seed: dict, sft_record: dict) -> dict[str, float]:
    """Minutes of compute the results cost, from what each step recorded (true across resumed benchmarks)."""
    summaries = [out / f"seed{s}" / n / "summary.json" for s in seeds for n in plan.runs]
    train = sum(json.loads(f.read_text()).get("train_seconds", 0.0) for f in summaries if f.is_file())
    evaluate = sft_record["seconds"] + sum(r["seconds"] for recs in per_seed.values() for r in recs.values())
    gold = json.loads((out / "gold_rm" / "metrics.json").read_text()).get("train_seconds", 0.0) \
        if (out / "gold_rm" / "metrics.json").is_file() else 0.0
    return {"training": train / 60, "evaluation": evaluate / 60, "gold RM": gold / 60}


def complete_parts(plan: Plan, per_seed: dict[int, dict]) -> set[str]:
    """The parts whose every candidate has a record (spec → record) in every seed of ``per_seed``."""
    return {part for _, part in plan.candidates.values()
            if all(spec in records for records in per_seed.values() for spec, p in plan.candidates.values()
                   if p == part)}
