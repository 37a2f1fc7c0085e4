"""Where WARP's M runs of an iteration train: one after another in the driver (sequential), side by side in
local worker processes (processes), or as Ray tasks (ray). Every executor only trains the runs it is given
(:class:`warprl.rl.warp.RunJob`); the WARP loop merges them from the files they leave."""

from __future__ import annotations

import ctypes
import dataclasses
import gc
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

import torch

from warprl import heap
from warprl.config import AlignConfig
from warprl.errors import UserError, first_line
from warprl.models import load_policy
from warprl.precision import release_memory
from warprl.reward import load_reward
from warprl.rl.checkpoint import note
from warprl.rl.loop import graceful_stop
from warprl.rl.warp import RESUME_HINT, RunJob, check_stop, train_run


def _worker_models(cfg: AlignConfig, reward_fn, device: str) -> tuple:
    """A worker's (policy, tokenizer, reward): the reward_fn the driver sent, else ``cfg.reward`` loaded here."""
    policy, tok = load_policy(cfg.policy, device=device)
    reward = reward_fn if reward_fn is not None else load_reward(cfg.reward, device=device, bf16=cfg.bf16)
    return policy, tok, reward


def _ray_run_task(cfg: AlignConfig, job: RunJob, reward_fn, prompts: list[str], threads: int, device: str) -> str:
    """A Ray task: one run in a worker process, which loads its own policy (and reward unless given)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # Ray forwards worker output to the driver: keep it to errors
    # Ray starts workers with OMP_NUM_THREADS=1; the driver's thread count fixes the float reduction order
    # of CPU kernels, so matching it makes a Ray run bit-identical to the same run in the driver.
    torch.set_num_threads(threads)
    heap.keep_freed_memory()  # this Ray worker's process, as the `warprl` command sets the driver's (warprl.heap)
    policy, tok, reward_fn = _worker_models(cfg, reward_fn, device)
    with graceful_stop():  # Ray's cancel() interrupts the task via SIGINT: checkpoint, then stop
        train_run(cfg, job, policy, tok, reward_fn, prompts)
    return job.run_dir


# ------------------------------------------------------------------------------------------- executors


class SequentialExecutor:
    """The M runs one after another in the driver, in one model instance (one policy + optimiser at a time)."""

    def __init__(self, cfg: AlignConfig, policy, tok, reward_fn, prompts: list[str]):
        self.cfg, self.policy, self.tok, self.reward_fn, self.prompts = cfg, policy, tok, reward_fn, prompts

    def run(self, jobs: list[RunJob]) -> None:
        for job in jobs:
            check_stop(f"before run {job.run} of iteration {job.iteration}")
            train_run(self.cfg, job, self.policy, self.tok, self.reward_fn, self.prompts)
            if heap.kept():
                # With the heap kept the next run would not fit all of its blocks into the freed ones and the
                # peak would grow with every run (M=4: +0.69 GiB over M=2, RESULTS.md "WARP memory"): trim.
                release_memory(self.policy.device)
            else:  # glibc's defaults: the next run reuses the heap's pages (a trim cost ~0.5 s, then page faults)
                gc.collect()

    def close(self) -> None:
        release_memory(self.policy.device)  # what the driver's merges left


TASK_RETRIES = 2  # a worker that dies (OOM kill, lost node) is replaced; the retried run resumes from its checkpoint


class ProcessExecutor:
    """The M runs of an iteration side by side in local worker processes (no Ray): one per usable core up to M,
    the driver's torch threads split between them. Where a step's small matmuls scale poorly with threads, runs
    side by side train more steps per second (1.10× on 2 cores: benchmarks/bench_executors.py). Results equal
    the sequential executor's bit for bit only where a worker's thread count equals the driver's (e.g. a
    1-thread driver): the thread count sets the CPU kernels' reduction order.

    Workers are spawned (not forked: the driver holds torch's thread pools), keep their model between
    iterations, end with the driver (a killed driver leaves no worker writing into the folder) and are replaced
    when one dies, its run resuming from its checkpoint, as Ray's retries do.
    """

    def __init__(self, cfg: AlignConfig, device: torch.device, reward_fn, prompts: list[str]):
        self.cfg = dataclasses.replace(cfg, progress=False)  # M interleaved bars are unreadable
        self.show = cfg.progress
        self.device = str(device)
        self.reward_fn, self.prompts = reward_fn, prompts
        self.workers = min(cfg.runs, usable_cores())
        self.threads = max(1, torch.get_num_threads() // self.workers)  # a 1-thread driver: 1-thread workers
        self.context = multiprocessing.get_context("spawn")
        self.stop = self.context.Event()  # tells the workers' runs to checkpoint and stop (the driver's SIGTERM)
        self.pool = None
        self._start()  # now: the workers import torch and load their models while the driver prepares the folder

    def _start(self) -> ProcessPoolExecutor:
        if self.pool is None:
            self.stop.clear()
            pool = ProcessPoolExecutor(self.workers, mp_context=self.context, initializer=_process_worker_init,
                                       initargs=(os.getpid(), self.threads, self.stop, self.cfg, self.reward_fn,
                                                 self.device))
            try:
                for _ in range(self.workers):  # a spawn pool starts a worker per submitted task, up to max_workers
                    pool.submit(_process_worker_ready)
            except Exception as e:  # starting a worker sends it the initargs: reward_fn must survive that
                pool.shutdown(wait=False, cancel_futures=True)
                raise ValueError(f"cannot start the worker processes ({first_line(e)}): a reward_fn given to the "
                                 "processes executor must be a module-level function, or None to let each worker "
                                 "load cfg.reward") from None
            self.pool = pool
        return self.pool

    def run(self, jobs: list[RunJob]) -> None:
        failures = 0
        while jobs:
            pool = self._start()
            futures = {pool.submit(_process_run_task, self.cfg, job, self.prompts): job for job in jobs}
            try:
                jobs = self._wait(futures)
            except BaseException:
                self.stop.set()  # the other runs checkpoint after their current step, then end
                wait(futures, timeout=120)
                raise
            if jobs:  # a worker died (OOM kill, SIGKILL): a new pool, and the unfinished runs resume
                failures += 1
                self.close()
                if failures > TASK_RETRIES:
                    job = jobs[0]
                    raise UserError(f"run {job.run} of iteration {job.iteration} lost its worker process "
                                    f"{failures} times; finished runs and checkpoints are kept — {RESUME_HINT}")
                note(f"a worker process died: run(s) {', '.join(str(j.run) for j in jobs)} go on from their "
                     "checkpoints in a new one")

    def _wait(self, futures: dict) -> list[RunJob]:
        """Wait for every run; returns the runs whose worker died (to run again), raises a run's own error."""
        lost, pending = [], set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                job = futures[future]
                try:
                    future.result()
                except BrokenProcessPool:
                    lost.append(job)
                    continue
                if self.show:
                    print(f"WARP: finished run {job.run} of iteration {job.iteration}", file=sys.stderr)
            check_stop("while the runs were training")
        return lost

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


_WORKER: dict = {}  # a worker process's start arguments, policy and reward, kept between its runs


def _process_worker_init(driver: int, threads: int, stop, cfg: AlignConfig, reward_fn, device: str) -> None:
    """A worker's start: its share of the threads, no progress bars, an end tied to the driver's, and its
    policy and reward loaded."""
    if sys.platform.startswith("linux"):  # the kernel kills this worker the moment the driver dies
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    if os.getppid() != driver:  # the driver died before prctl took effect
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C reaches the driver, which sets `stop`
    torch.set_num_threads(threads)
    heap.keep_freed_memory()  # as the `warprl` command does in the driver (spawned workers start with glibc's defaults)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    def watch() -> None:
        while True:
            if os.getppid() != driver:  # orphaned (no prctl outside Linux): stop writing at once
                os._exit(1)
            if stop.wait(0.5):
                os.kill(os.getpid(), signal.SIGINT)  # the run's graceful_stop handler: checkpoint, then stop
                while stop.is_set() and os.getppid() == driver:
                    time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    _WORKER["start"] = (cfg, reward_fn, device)
    try:
        _load_worker_models()
    except Exception:  # noqa: BLE001  a failed initializer breaks the pool: the run's own load raises it instead
        pass


def _load_worker_models() -> None:
    """The worker's policy (and reward, unless the driver sent one), loaded once and kept between its runs."""
    if "policy" not in _WORKER:
        policy, tok, reward = _worker_models(*_WORKER["start"])
        _WORKER.update(policy=policy, tok=tok, reward=reward)


def _process_worker_ready() -> None:
    """A no-op task: submitting one per worker makes the pool start them all at once."""


def _process_run_task(cfg: AlignConfig, job: RunJob, prompts: list[str]) -> str:
    """One run in a worker process, in the models its start loaded."""
    _load_worker_models()  # done at the start, unless that failed: then its error is this run's
    with graceful_stop():
        train_run(cfg, job, _WORKER["policy"], _WORKER["tok"], _WORKER["reward"], prompts)
    release_memory(_WORKER["policy"].device)
    return job.run_dir


RAY_CONNECT_TIMEOUT_S = 10.0


def check_ray_address(address: str, timeout: float = RAY_CONNECT_TIMEOUT_S) -> None:
    """Fail fast on an address nothing answers at: ray.init retries an unreachable cluster for minutes
    (``auto`` and ``local`` are Ray's to resolve: it answers at once when no cluster runs here)."""
    if address in ("auto", "local"):
        return
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise UserError(f"--ray-address {address}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__  # socket.timeout has no strerror
        raise UserError(f"cannot join the Ray cluster at --ray-address {address}: nothing answers there "
                        f"({reason}); start it with `ray start --head` or check the address") from None


def import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--executor ray needs: pip install 'warprl[ray]'") from None
    return ray


class RayExecutor:
    """The M runs of an iteration as parallel Ray tasks; the driver waits, then merges from the files.

    Workers read θ_init and write their run folders through the file system, so on a multi-node cluster
    --out must be on storage shared by all nodes.
    """

    def __init__(self, cfg: AlignConfig, device: torch.device, reward_fn, prompts: list[str]):
        ray = import_ray()
        self.ray = ray
        self.started = False
        if not ray.is_initialized():
            if cfg.ray_address:
                check_ray_address(cfg.ray_address)
                try:
                    ray.init(address=cfg.ray_address, logging_level="WARNING")
                except (ConnectionError, RuntimeError, ValueError) as e:
                    first = first_line(e)
                    raise UserError(f"cannot join the Ray cluster at --ray-address {cfg.ray_address}: {first}") from None
            else:
                ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, logging_level="WARNING")
                self.started = True
        # Workers print only errors (M interleaved bars are unreadable); --progress never changes a result.
        self.cfg = dataclasses.replace(cfg, progress=False)
        self.show = cfg.progress
        self.device = "cuda" if device.type == "cuda" else "cpu"  # a worker sees only its own GPU
        self.reward_fn, self.prompts = reward_fn, prompts
        self.threads = torch.get_num_threads()
        # One CPU per task so that M runs can share a node; a GPU each when training on CUDA.
        self.task = ray.remote(_ray_run_task).options(num_cpus=1, num_gpus=1 if self.device == "cuda" else 0,
                                                      max_retries=TASK_RETRIES)

    def run(self, jobs: list[RunJob]) -> None:
        ray = self.ray
        refs = {self.task.remote(self.cfg, job, self.reward_fn, self.prompts, self.threads, self.device): job
                for job in jobs}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
                for ref in done:
                    self._get(ref, refs[ref])
                    if self.show:
                        job = refs[ref]
                        print(f"WARP: finished run {job.run} of iteration {job.iteration}", file=sys.stderr)
                check_stop("while the runs were training")
        except BaseException:
            # Non-forced cancel raises SIGINT in the task: run_rl checkpoints after its current step.
            for ref in pending:
                ray.cancel(ref)
            for ref in pending:
                try:
                    ray.get(ref, timeout=120)
                except Exception:  # cancelled or interrupted: its checkpoint is what counts
                    pass
            raise

    def _get(self, ref, job: RunJob) -> None:
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, UserError):
                raise type(cause)(str(cause)) from None  # one clean line, not the worker's traceback
            raise
        except self.ray.exceptions.RayError as e:  # the worker or its node died more often than retried
            raise UserError(f"run {job.run} of iteration {job.iteration} failed on Ray {TASK_RETRIES + 1} times "
                            f"({type(e).__name__}: {first_line(e, 100)}); finished runs and checkpoints are kept "
                            f"— {RESUME_HINT}") from None

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()



def make_executor(cfg: AlignConfig, device: torch.device, policy, tok, reward_fn, prompts: list[str]):
    """Where the M runs of an iteration execute. Ray's starts now (before any signal handler of ours: Ray sets
    its own); with Ray ``reward_fn`` may be None (each worker loads ``cfg.reward``), sequentially it may not."""
    if cfg.executor == "ray":
        return RayExecutor(cfg, device, reward_fn, prompts)
    if cfg.executor == "processes":
        return ProcessExecutor(cfg, device, reward_fn, prompts)
    if reward_fn is None:
        raise ValueError("the sequential executor needs a reward function")
    return SequentialExecutor(cfg, policy, tok, reward_fn, prompts)
