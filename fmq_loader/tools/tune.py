"""`fmq-loader tune`: measure loader settings on the configured dataset; name the bottleneck.

Within a time budget, each *trial* builds an FMQLoader from the config with one setting
(``num_workers``, ``prefetch_factor``, and the JPEG decoder when simplejpeg could help),
iterates it with a consumer that does nothing, and measures images/s:

- the first ``num_workers * prefetch_factor + 1`` batches are warm-up (worker start-up,
  and batches made while the first one was awaited) and are not counted;
- the rest is cut into windows of equal batch counts; a window's rate is its images over
  the time between the last batch of the previous window and its own last batch;
- the trial's figure is the median of its windows' rates (robust to a noisy neighbour).

With ``step_s`` (``--step-ms``) the loop sleeps that long per batch, standing in for a
training step that leaves the CPU to the workers (a GPU step), so the figures say which
setting keeps such a loop fed. Among settings within 3% of the fastest, the one with the
fewest workers (then the smallest prefetch) is chosen.

Trials walk ``num_workers`` up a ladder (1, 2, 3, 4, 6, 8, ... up to twice the usable
cores), stopping early once past the core count and slower than the best, then try the
other prefetch factor at the worker count chosen so far (by the rule above), then the
decoder. The budget is shared among the planned trials; epochs repeat inside a trial
(their ends are part of what training sees). Trials use persistent workers, and the
written config sets ``persistent_workers: true``.

The bottleneck is read from the best trial (``loader.stats()`` deltas plus the workers'
CPU time from /proc):

- **consumer-bound**: the loop hardly waits (data-bound share low): batches are ready
  before ``next()`` asks, so the process taking them is the limit;
- **shared-memory-bound**: batches travelled through the pipe because no slab was free;
- **I/O-bound**: the loop waits, yet the workers use little CPU (they wait on files);
- **decode-bound**: the loop waits and the workers' CPUs are busy decoding; more workers
  help until the cores run out, then a faster decoder or more cores.

``tune()`` returns a ``TuneResult``; ``TuneResult.to_yaml()`` is the input config with the
best settings and ``dataset.root`` made absolute, as YAML that ``load_config`` /
``FMQLoader.from_config`` read from any directory.

Longer than the ~400-line guide: one command, the trials it measures and the diagnosis
it prints, which are read together.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

from ..errors import FMQError
from .config import LoaderConfig, dump_config, load_config

__all__ = ["TuneError", "Trial", "TuneResult", "tune", "worker_ladder"]

MIN_WINDOWS = 3  # windows needed for a median
MIN_WINDOW_BATCHES = 2  # batches per window, at least
MAX_WINDOWS = 7
MIN_TRIAL_S = 0.75  # below this a trial's slice is mostly worker start-up
MAX_WORKERS = 32
TIE = 0.03  # settings this close to the fastest count as equally fast
DATA_BOUND_LOW = 0.2  # below: the loop hardly waits for data
CPU_SHARE_LOW = 0.5  # workers used less than half the CPU they could: waiting on I/O


class TuneError(FMQError, ValueError):
    """tune cannot measure with this dataset or budget; the message says what to change."""


@dataclass(frozen=True)
class Trial:
    """One setting and what it measured (figures over the batches after warm-up).

    Attributes:
        images_per_s: median of ``window_rates``.
        data_bound: share of the measured wall time spent waiting in ``next()``.
        busy_share: the workers' mean busy share over the measured time (stats()).
        cpu_share: the workers' CPU seconds (from /proc) over what they could have used:
            wall seconds times min(num_workers, cores).
        startup_s: ``iter()`` to the first batch, worker start-up included.
        pipe_batches: batches that went through the pipe for want of a free slab (when
            the loader's stats report it, else 0).
    """

    num_workers: int
    prefetch_factor: int
    decoder: str
    images_per_s: float
    window_rates: tuple[float, ...]
    batches: int
    images: int
    seconds: float
    startup_s: float
    data_bound: float
    busy_share: float
    cpu_share: float
    pipe_batches: int = 0

    def setting(self) -> str:
        return f"num_workers={self.num_workers} prefetch_factor={self.prefetch_factor} " \
               f"decoder={self.decoder}"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TuneResult:
    """What ``tune`` measured, its choice and its diagnosis."""

    trials: tuple[Trial, ...]
    best: Trial
    bottleneck: str
    reason: str
    config: LoaderConfig  # the input config with the best settings
    cores: int
    budget_s: float
    spent_s: float
    batches_per_epoch: int

    @property
    def baseline(self) -> Trial:
        """The first 1-worker trial (the reference the speed-ups are relative to)."""
        return next(t for t in self.trials if t.num_workers == 1)

    def table(self) -> str:
        base = self.baseline.images_per_s
        lines = [f"{'workers':>7} {'prefetch':>8} {'decoder':>10} {'images/s':>9} "
                 f"{'vs 1 worker':>11} {'data-bound':>10} {'workers busy':>12} "
                 f"{'worker CPU':>10} {'start-up':>8}"]
        for t in self.trials:
            mark = "  <- best" if t is self.best else ""
            lines.append(
                f"{t.num_workers:>7} {t.prefetch_factor:>8} {t.decoder:>10} "
                f"{t.images_per_s:>9.1f} {t.images_per_s / base if base else 0:>10.2f}x "
                f"{t.data_bound:>10.0%} {_pct(t.busy_share):>12} {_pct(t.cpu_share):>10} "
                f"{t.startup_s:>7.2f}s{mark}")
        return "\n".join(lines)

    def to_yaml(self) -> str:
        b = self.best
        head = (f"# written by `fmq-loader tune` from {self.config.source}: best of "
                f"{len(self.trials)} trials in {self.spent_s:.0f} s on {self.cores} cores\n"
                f"# {b.setting()}: {b.images_per_s:.1f} images/s "
                f"({b.images_per_s / self.baseline.images_per_s:.2f}x 1 worker); "
                f"bottleneck: {self.bottleneck}\n")
        return head + dump_config(self.config)

    def as_dict(self) -> dict:
        return {"trials": [t.as_dict() for t in self.trials], "best": self.best.as_dict(),
                "bottleneck": self.bottleneck, "reason": self.reason, "cores": self.cores,
                "budget_s": self.budget_s, "spent_s": self.spent_s,
                "batches_per_epoch": self.batches_per_epoch}


def _pct(x: float) -> str:
    return "-" if x != x else f"{x:.0%}"  # NaN: not measured


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def worker_ladder(cores: int, cap: int = MAX_WORKERS) -> list[int]:
    """1, 2, 3, 4, 6, 8, 12, 16, 24, 32 ... up to ``2 * cores`` (and ``cap``)."""
    top = max(2, min(2 * cores, cap))
    ladder, n = [1, 2, 3, 4], 4
    while n < top:
        n = n * 3 // 2 if n & (n - 1) == 0 else n * 4 // 3  # 4->6->8->12->16->24->32
        ladder.append(n)
    return [w for w in ladder if w <= top]


def _min_epoch_batches(workers: int, prefetch: int) -> int:
    return workers * prefetch + 1 + MIN_WINDOWS * MIN_WINDOW_BATCHES


def _cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _samples(batch) -> int:
    for part in (batch if isinstance(batch, (list, tuple)) else (batch,)):
        shape = getattr(part, "shape", None)
        if shape is not None and len(shape):
            return int(shape[0])
    return 1


def _windows(stamps: Sequence[tuple[float, int]], t0: float) -> list[float]:
    """Rates (images/s) of up to MAX_WINDOWS consecutive equal-count windows of batches."""
    k = min(MAX_WINDOWS, len(stamps) // MIN_WINDOW_BATCHES)
    if k < MIN_WINDOWS:
        return []
    per = len(stamps) // k
    rates, start = [], t0
    for j in range(k):
        chunk = stamps[j * per:(j + 1) * per] if j < k - 1 else stamps[j * per:]
        end = chunk[-1][0]
        if end > start:
            rates.append(sum(n for _, n in chunk) / (end - start))
        start = end
    return rates


def _stat(stats, name: str, default=0):
    return getattr(stats, name, default) if stats is not None else default


def _run_trial(cfg: LoaderConfig, dataset, workers: int, prefetch: int, decoder: str,
               slice_s: float, step_s: float = 0.0) -> tuple[Trial | None, dict]:
    """One trial; returns (Trial or None when it measured too little, facts for messages)."""
    with warnings.catch_warnings():
        # the ladder goes past the core count on purpose: no "more workers than CPUs" warning
        warnings.filterwarnings("ignore", message=r"num_workers=\d+: this DataLoader will create")
        return _measure_trial(cfg, dataset, workers, prefetch, decoder, slice_s, step_s)


def _measure_trial(cfg: LoaderConfig, dataset, workers: int, prefetch: int, decoder: str,
                   slice_s: float, step_s: float) -> tuple[Trial | None, dict]:
    from .build import loader_from_config

    warmup = workers * prefetch + 1
    t_start = time.perf_counter()
    deadline = t_start + slice_s
    hard_stop = t_start + 2 * slice_s + 5.0  # a trial never runs away with the budget
    # persistent workers: one pool for the whole trial, so stats() deltas compare the same
    # workers, and epoch ends cost what a tuned training run would pay
    loader = loader_from_config(dataset, cfg, num_workers=workers, prefetch_factor=prefetch,
                                persistent_workers=True)
    stamps: list[tuple[float, int]] = []
    startup = t0 = None
    s0 = s1 = None
    cpu0: dict = {}
    n = 0
    try:
        it = iter(loader)
        while True:
            try:
                batch = next(it)
            except StopIteration:
                it = iter(loader)  # the next epoch; its start-up counts, as in training
                continue
            now = time.perf_counter()
            size = _samples(batch)
            del batch
            if step_s:
                time.sleep(step_s)  # the training step, as a GPU step: the CPU stays free
            n += 1
            if n == 1:
                startup = now - t_start
            if n == warmup:
                t0 = now
                s0 = loader.stats()
                cpu0 = {w.pid: _cpu_seconds(w.pid) for w in _stat(s0, "workers", ())}
            elif n > warmup:
                stamps.append((now, size))
            if (now >= deadline and n > warmup) or now >= hard_stop:
                break
        s1 = loader.stats()
        cpu1 = {w.pid: _cpu_seconds(w.pid) for w in _stat(s1, "workers", ())}
    finally:
        loader.close()
    facts = {"startup_s": startup or 0.0, "batches": len(stamps), "warmup": warmup,
             "seconds": time.perf_counter() - t_start,
             "batch_s": ((stamps[-1][0] - t0) / len(stamps)) if stamps else None}
    rates = _windows(stamps, t0) if stamps else []
    if not rates:
        return None, facts
    seconds = stamps[-1][0] - t0
    wall = max(_stat(s1, "elapsed_s", 0.0) - _stat(s0, "elapsed_s", 0.0), 1e-9)
    data_bound = min(1.0, max(0.0, (_stat(s1, "wait_s", 0.0) - _stat(s0, "wait_s", 0.0)) / wall))
    busy0 = {w.worker_id: w.busy_s for w in _stat(s0, "workers", ())}
    busy = [min(1.0, max(0.0, (w.busy_s - busy0.get(w.worker_id, 0.0)) / wall))
            for w in _stat(s1, "workers", ())]
    cpu = [cpu1[p] - cpu0[p] for p in cpu1 if cpu1.get(p) is not None and cpu0.get(p) is not None]
    # the share of the CPU the workers could have used: more workers than cores share them
    usable = wall * min(len(cpu), usable_cores())
    trial = Trial(
        num_workers=workers, prefetch_factor=prefetch, decoder=decoder,
        images_per_s=statistics.median(rates), window_rates=tuple(rates),
        batches=len(stamps), images=sum(k for _, k in stamps), seconds=seconds,
        startup_s=startup or 0.0, data_bound=data_bound,
        busy_share=statistics.fmean(busy) if busy else float("nan"),
        cpu_share=min(1.0, sum(cpu) / usable) if cpu else float("nan"),
        pipe_batches=int(_stat(s1, "pipe_batches", 0)) - int(_stat(s0, "pipe_batches", 0)))
    return trial, facts


def _choose(trials: Sequence[Trial]) -> Trial:
    """Within TIE of the fastest, fewer workers and a smaller prefetch win: the same speed
    for less memory and CPU, and measurement noise decides nothing."""
    fastest = max(t.images_per_s for t in trials)
    return min((t for t in trials if t.images_per_s >= (1 - TIE) * fastest),
               key=lambda t: (t.num_workers, t.prefetch_factor, -t.images_per_s))


def _diagnose(trials: Sequence[Trial], best: Trial, cores: int) -> tuple[str, str]:
    base = next(t for t in trials if t.num_workers == 1)
    gain = best.images_per_s / base.images_per_s if base.images_per_s else 0.0
    scaling = (f"images/s went from {base.images_per_s:.0f} with 1 worker to "
               f"{best.images_per_s:.0f} with {best.num_workers} ({gain:.2f}x) on {cores} cores"
               if best.num_workers > 1 else
               f"1 worker was fastest ({best.images_per_s:.0f} images/s) on {cores} cores")
    if best.pipe_batches > 0:
        return ("shared-memory-bound",
                f"{best.pipe_batches} batches went through the pipe because every slab was in "
                "use; raise queue.extra_slabs, or hold fewer batches in the loop")
    if best.data_bound < DATA_BOUND_LOW:
        return ("consumer-bound",
                f"the loop waited for data only {best.data_bound:.0%} of the time: batches are "
                "ready before next() asks, so the main process is the limit; more workers "
                "will not help")
    cpu = best.cpu_share
    if cpu == cpu and cpu < CPU_SHARE_LOW:  # not NaN
        return ("I/O-bound",
                f"the loop waited {best.data_bound:.0%} of the time while the workers used "
                f"only {cpu:.0%} of their cores (busy {best.busy_share:.0%}): they wait on "
                "files, not on decoding; use faster storage, a local copy, or more workers "
                "to overlap the reads")
    most = max(t.num_workers for t in trials)
    if best.num_workers < most:
        hint = ("more workers did not help (the cores are busy: other processes count too); "
                "more cores would, or a faster decoder: reinstall fmq-loader with libjpeg-turbo's "
                "headers for the C region decoder, or `pip install simplejpeg` (with "
                "dataset.decoder: auto, the default, they are then used)")
    else:
        hint = (f"images/s still rose at {most} workers, the most tried; try more with "
                f"--workers {most},{2 * most}")
    return ("decode-bound",
            f"the loop waited {best.data_bound:.0%} of the time and the workers kept their "
            f"cores busy ({cpu:.0%} CPU); {scaling}; {hint}")


def tune(config, *, budget_s: float = 60.0, workers: Sequence[int] | None = None,
         prefetch: Sequence[int] | None = None, dataset=None, overrides=None,
         step_s: float = 0.0, progress: Callable[[str], None] | None = None) -> TuneResult:
    """Try loader settings on the configured dataset within ``budget_s`` seconds.

    Args:
        config: a YAML path, a mapping or a LoaderConfig (its dataset section is read).
        budget_s: wall-clock seconds for all trials together; each trial gets an equal
            share, at least ``MIN_TRIAL_S``.
        workers: num_workers values to try (default: ``worker_ladder(cores)``); 1 is
            always tried, as the reference.
        prefetch: prefetch factors (default: the config's, then 4 and 2); the first is
            used while walking the worker counts, the others at the chosen count.
        dataset: the dataset to use instead of building the config's ImageFolder.
        overrides: as for ``load_config``.
        step_s: seconds the loop sleeps per batch, standing in for a training step that
            leaves the CPU free (a GPU step); 0 measures the loader alone.
        progress: called with a line after each trial (e.g. ``print``).

    Returns:
        a ``TuneResult``.

    Raises:
        TuneError: a dataset too small to measure, or a budget too short to measure;
            the message gives the numbers and what to change.
        ConfigError: a bad config.
    """
    from .build import build_dataset
    from ..images.decode import fast_decoder_available

    cfg = load_config(config, overrides)
    if not isinstance(budget_s, (int, float)) or budget_s != budget_s:
        raise TuneError(f"budget_s must be a number of seconds, got {budget_s!r}")
    if not isinstance(step_s, (int, float)) or not 0 <= step_s < budget_s / 20:
        raise TuneError(f"step_s must be a number of seconds in [0, budget_s/20), got "
                        f"{step_s!r}; e.g. 0.05 for a 50 ms training step")
    min_budget = 2 * MIN_TRIAL_S
    if budget_s < min_budget:
        raise TuneError(f"budget of {budget_s:g} s is too short to measure: tune needs at "
                        f"least 2 trials of {MIN_TRIAL_S:g} s; use --budget-s {min_budget:g} "
                        "or more (e.g. --budget-s 60)")
    cores = usable_cores()
    ladder = sorted({int(w) for w in (workers or worker_ladder(cores))} | {1})
    if any(w < 1 for w in ladder):
        raise TuneError(f"worker counts must be ints >= 1, got {list(workers)!r}")
    base_prefetch = cfg.loader.prefetch_factor or 2
    factors = list(dict.fromkeys(int(p) for p in (prefetch or (base_prefetch, 4, 2))))
    if any(p < 1 for p in factors):
        raise TuneError(f"prefetch factors must be ints >= 1, got {list(prefetch)!r}")
    built = dataset is None
    if built:
        dataset = build_dataset(cfg, progress=False)
    bs = cfg.loader.batch_size
    n = len(dataset)
    per_epoch = n // bs if cfg.loader.drop_last else -(-n // bs)
    need = _min_epoch_batches(2, factors[0])
    if per_epoch < need:
        smaller = (f" or lower loader.batch_size to {n // need}" if n // need >= 1 else "")
        raise TuneError(
            f"dataset too small to tune: {n} images make {per_epoch} batches of {bs} per "
            f"epoch, and a 2-worker trial needs {need} in one epoch ({2 * factors[0] + 1} "
            f"warm-up + {MIN_WINDOWS} windows of {MIN_WINDOW_BATCHES}); use a folder of at "
            f"least {need * bs} images (synth.per_class for a generated one){smaller}")
    # more workers than an epoch can keep busy would only measure their start-up
    ladder = [w for w in ladder if w == 1 or _min_epoch_batches(w, factors[0]) <= per_epoch]
    decoders = [cfg.dataset.decoder]
    if built and fast_decoder_available() and cfg.dataset.decoder == "pillow":
        decoders.append("auto")
    extra = (len(factors) - 1) + (len(decoders) - 1)
    # drop the biggest worker counts until every planned trial gets MIN_TRIAL_S
    while len(ladder) > 2 and budget_s / (len(ladder) + extra) < MIN_TRIAL_S:
        ladder.pop()
    while extra and budget_s / (len(ladder) + extra) < MIN_TRIAL_S:
        extra -= 1
        if len(decoders) > 1:
            decoders.pop()
        else:
            factors.pop()

    start = time.perf_counter()
    trials: list[Trial] = []

    def remaining_slice(planned_left: int) -> float:
        left = budget_s - (time.perf_counter() - start)
        return max(MIN_TRIAL_S, left / max(1, planned_left))

    def run(w: int, p: int, decoder: str, planned_left: int) -> Trial:
        slice_s = remaining_slice(planned_left)
        c = cfg if decoder == cfg.dataset.decoder else load_config(
            cfg, {"dataset.decoder": decoder})
        ds = dataset if decoder == cfg.dataset.decoder else build_dataset(c)
        trial, facts = _run_trial(c, ds, w, p, decoder, slice_s, step_s)
        if trial is None:
            per_trial = facts["startup_s"] + (facts["warmup"] + MIN_WINDOWS * MIN_WINDOW_BATCHES
                                             + 2) * (facts["batch_s"] or facts["startup_s"])
            suggest = max(budget_s * 2, per_trial * (len(ladder) + extra) * 1.5)
            raise TuneError(
                f"budget of {budget_s:g} s is too short to measure: the {w}-worker trial's "
                f"{slice_s:.1f} s share went on start-up ({facts['startup_s']:.2f} s) and "
                f"{facts['warmup']} warm-up batches, leaving {facts['batches']} batches "
                f"(needs {MIN_WINDOWS * MIN_WINDOW_BATCHES}); raise --budget-s to at least "
                f"{suggest:.0f}, try fewer worker counts (--workers 1,2), or lower "
                "loader.batch_size")
        trials.append(trial)
        if progress is not None:
            progress(f"trial {len(trials)}: {trial.setting()}: {trial.images_per_s:.1f} "
                     f"images/s (windows {', '.join(f'{r:.0f}' for r in trial.window_rates)})")
        return trial

    fastest: Trial | None = None
    for i, w in enumerate(ladder):
        t = run(w, factors[0], decoders[0], len(ladder) - i + extra)
        if fastest is None or t.images_per_s > fastest.images_per_s:
            fastest = t
        elif w > cores and t.images_per_s < 0.9 * fastest.images_per_s:
            break  # past the cores and slower: more workers only add contention
    # The other prefetch factors, then decoders, at the setting chosen so far, not merely
    # the fastest one: a count within TIE of a faster one with more workers is the one
    # written out, and a trial at a count that cannot be chosen measures nothing useful.
    planned = extra
    for p in factors[1:]:
        run(_choose(trials).num_workers, p, decoders[0], planned)
        planned -= 1
    for d in decoders[1:]:
        pick = _choose(trials)
        run(pick.num_workers, pick.prefetch_factor, d, planned)
        planned -= 1
    best = _choose(trials)
    bottleneck, reason = _diagnose(trials, best, cores)
    chosen = {"loader.num_workers": best.num_workers,
              "loader.prefetch_factor": best.prefetch_factor,
              "loader.persistent_workers": True}
    if best.decoder != cfg.dataset.decoder:
        chosen["dataset.decoder"] = best.decoder
    tuned = load_config(cfg, chosen)
    if tuned.dataset.root is not None:
        # absolute: the written file is read from wherever train or from_config run, and
        # load_config reads a relative root from the current directory, not the file's
        tuned = dataclasses.replace(tuned, dataset=dataclasses.replace(
            tuned.dataset, root=os.path.abspath(tuned.dataset.root)))
    return TuneResult(trials=tuple(trials), best=best, bottleneck=bottleneck, reason=reason,
                      config=tuned, cores=cores, budget_s=float(budget_s),
                      spent_s=time.perf_counter() - start, batches_per_epoch=per_epoch)
