"""train(cfg, tracker) -> RunSummary: the reference training loop, top to bottom.

Faithful to modded-nanogpt's ModernArch record: gradient accumulation with DDP no_sync, grads
divided by the accumulation steps, AdamW + Muon stepped with the schedule's multiplier, validation
at step 0, every val_every steps and at the end over a fixed number of tokens, the clock reset at
step 10 and stopped around validation and checkpoints, and the reference's step lines.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from trainer import checkpoint, dist, megacache
from trainer.build import (
    Geometry,
    build_loaders,
    build_model,
    build_optimizers,
    compile_model,
    select_sdpa_backend,
    use_compile,
)
from trainer.clock import TrainClock
from trainer.config import TrainConfig
from trainer.diagnostics import diagnose
from trainer.errors import STORAGE_ERRNOS, StorageError
from trainer.loader import ShardLoader
from trainer.paths import storage_error
from trainer.runlog import RunLog, append_result, git_info, header, start_nvidia_smi, train_line, val_line
from trainer.schedule import lr_factor
from trainer.signals import StopRequest
from trainer.startup import COMPILE_MODULES, EAGER_MODULES, Prewarm, StartupClock
from trainer.tracking import NullTracker, Tracker, make_tracker

logger = logging.getLogger(__name__)


@dataclass
class RunSummary:
    run_id: str
    status: str  # FINISHED | FAILED | KILLED | EARLY_STOPPED
    reason: str = ""
    step: int = 0
    final_val_loss: float = math.nan
    best_val_loss: float = math.nan
    train_time_ms: float = 0.0
    ms_per_step: float = math.nan
    peak_mem_mib: float = 0.0
    val_history: list[tuple[int, float]] = field(default_factory=list)
    log_path: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


# Called after each validation with (step, val_loss); returning True stops the run (EARLY_STOPPED).
ValCallback = Callable[[int, float], bool]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def shared_run_id(cfg: TrainConfig, env: dist.DistEnv) -> str:
    """cfg's run_id, else a fresh one that rank 0 draws and every rank shares."""
    run_id = [cfg.run.run_id or str(uuid.uuid4())]
    if env.distributed:
        torch.distributed.broadcast_object_list(run_id, src=0)
    return run_id[0]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch on `device`: through pinned memory on CUDA, so the copy is queued, not waited for."""
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _first_batch(loader: ShardLoader, drawn: int, replay: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The pending micro-batch at a step boundary with `drawn` batches already taken from the loader.
    The reference draws batch 0 before building the model and then resets the loader, so a fresh
    run's first pending batch is batch 0 while the loader stands at 0 (batch 0 is trained twice)."""
    if drawn == 0:
        loader.seek(0)
        batch = loader.next_batch()
        if replay:
            loader.seek(0)
        return batch
    loader.seek(drawn - 1)
    return loader.next_batch()


def train(cfg: TrainConfig, tracker: Tracker | None = None, *, on_val: ValCallback | None = None,
          env: dist.DistEnv | None = None, startup: StartupClock | None = None) -> RunSummary:
    """startup: the process's start-up clock (`python -m trainer` passes it); None times from here."""
    startup = startup or StartupClock(since_process_start=False)
    own_env = env is None
    env = env or dist.setup(cfg.run.device)
    run_id = shared_run_id(cfg, env)
    out = Path(cfg.run.out_dir)
    if not env.is_main:
        tracker = NullTracker()
    elif tracker is None:
        tracker = make_tracker(out / "track")
    try:
        with StopRequest() as stop:
            return _train(cfg, tracker, env, run_id, stop, on_val, startup)
    except BaseException as e:
        reason = f"{type(e).__name__}: {e}"
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:  # a full disk: what to do, not a raw error
            reason = str(storage_error(e, out))
        tracker.finish("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED", reason)
        raise
    finally:
        if own_env:
            dist.teardown()


def _train(cfg: TrainConfig, tracker: Tracker, env: dist.DistEnv, run_id: str, stop: StopRequest,
           on_val: ValCallback | None, startup: StartupClock) -> RunSummary:
    r, N, device = cfg.run, cfg.run.num_iterations, env.device
    t_start = time.perf_counter()
    smi = ((startup.nvidia_smi or start_nvidia_smi())  # nvidia-smi runs while we set up
           if env.is_main and device.type == "cuda" else None)
    compiled = use_compile(cfg, device)
    # The compiler's imports (and the CUDA context) in the background, while the steps below run
    # mostly outside the GIL (numpy scans, the CPU init, the copy to the device).
    prewarm = Prewarm(startup, COMPILE_MODULES if compiled else EAGER_MODULES, device)
    try:
        with startup.phase("data"):
            geo = Geometry.of(cfg, env.world_size)
            train_loader, val_loader = build_loaders(cfg, env, geo)
        with startup.phase("model init"):
            model = build_model(cfg, torch.device("cpu"))  # the seed's weights on every device (build_model)
        with startup.phase("to device", sync=True):
            model = model.to(device)
    finally:
        prewarm.wait()  # before this thread could import the same modules (torch.optim does)
    out = Path(r.out_dir)
    ckpt_dir = out / "checkpoints" / run_id

    # ---------------------------------------------------------------- model, optimizers, resume
    with startup.phase("optimizers"):
        adam, muon = build_optimizers(cfg, model, env, compiled_ns=compiled)
    with startup.phase("checkpoint"):
        state = checkpoint.load_latest(ckpt_dir)
    start_step, drawn, time_ms, best, history = 0, 0, 0.0, math.inf, []
    if state is not None:
        checkpoint.check_same_trial(cfg, state["config"], ckpt_dir)
        checkpoint.check_same_world(state.get("world_size"), env.world_size, ckpt_dir)
        model.load_state_dict(state["model"])
        adam.load_state_dict(state["adam"])
        muon.scatter_state(state["muon"])
        checkpoint.set_rng_state(state["rng"])
        start_step, drawn, time_ms = state["step"], state["loader_drawn"], state["train_time_ms"]
        best, history = state["best_val_loss"], [tuple(h) for h in state["val_history"]]
    select_sdpa_backend(r.sdpa_backend)
    with startup.phase("compile cache"):
        cache_note = megacache.load(r.compile_cache) if compiled else ""  # before anything compiles
    with startup.phase("compile wrap"):
        net = compile_model(cfg, model) if compiled else model
        ddp = DDP(net, device_ids=[device.index] if device.type == "cuda" else None) if env.distributed else net
    autocast = (torch.autocast(device_type="cuda", dtype=torch.bfloat16) if device.type == "cuda"
                else contextlib.nullcontext())

    # ---------------------------------------------------------------- run record
    with startup.phase("nvidia-smi wait"):
        smi_text = smi() if smi else None
    with startup.phase("record"):
        sha, dirty = git_info()
        flat = cfg.flat() | {"run_id": run_id}
        log = RunLog(out / "logs" / f"{run_id}.txt", header(flat, sha, dirty, smi_text)) if env.is_main else None
        gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        tracker.log_params(flat)
        # host: rank 0's machine, of this attempt (a requeued trial may end on another node than it began)
        tracker.set_tags({"git_sha": sha + ("-dirty" if dirty else ""), "gpu_name": gpu, "host": socket.gethostname(),
                          "n_gpus": str(env.world_size), "gatesweep.run_uid": run_id})
    if state is not None and log:
        log.line(f"resumed from step {start_step} ({ckpt_dir / checkpoint.LATEST})")
    if state is not None and env.is_main:  # on the console too: a rerun that resumes says so
        logger.info(f"run {run_id}: resumed from step {start_step} of {N} ({ckpt_dir / checkpoint.LATEST})")
    if cache_note and env.is_main:  # console lines, as the reference prints its own; the log keeps its format
        logger.info(cache_note)
    t_setup = time.perf_counter()

    def evaluate() -> float:
        val_loader.reset()
        total = torch.zeros((), device=device)
        # No autograd: the loss head then computes no gradients (in grad mode its fused path computes
        # them in the forward) and the compiled blocks run their inference graph; measured ~40% less time
        # per validation batch on an H200 (bench/results/*-h200-sweep). Pinned, non-blocking copies: the
        # batches queue behind the forwards instead of waiting for each to finish.
        with torch.no_grad(), autocast:
            for _ in range(geo.val_steps):
                x, y = val_loader.next_batch()
                total += net(to_device(x, device), to_device(y, device)).detach()
        env.all_reduce_avg(total)
        return (total / geo.val_steps).item()

    def run_diagnostics() -> dict[str, float]:
        """On a fixed slice of the first val batch; the clock is already stopped here."""
        val_loader.reset()
        x, _ = val_loader.next_batch()
        with autocast:
            return diagnose(model, x[: r.diag_batch].to(device))

    def save(step: int) -> None:
        muon_state = muon.gather_state(env.broadcast)
        if env.is_main:
            checkpoint.save(ckpt_dir, {
                "step": step, "loader_drawn": train_loader.drawn,
                "model": model.state_dict(), "adam": adam.state_dict(), "muon": muon_state,
                "rng": checkpoint.rng_state(), "train_time_ms": time_ms, "best_val_loss": best,
                "val_history": history, "world_size": env.world_size, "config": flat})
        env.barrier()

    # ---------------------------------------------------------------- loop
    with startup.phase("first batch"):
        x, y = _first_batch(train_loader, drawn, cfg.data.replay_first_batch)
    status, reason, step = "FINISHED", "", start_step
    _sync(device)
    startup.sync = lambda: _sync(device)
    clock = TrainClock(start_step=start_step, train_ms=time_ms, resumed=state is not None)
    for step in range(start_step, N + 1):
        last = step == N
        clock.begin_step(step)
        timed = math.nan if step <= 11 else (step - 10) + 1
        already_done = state is not None and step == start_step  # validated before that checkpoint
        if not already_done and (last or (r.val_every > 0 and step % r.val_every == 0)):
            _sync(device)
            clock.pause()
            time_ms = clock.total_ms(step)
            with startup.phase("validation", sync=True):
                val = evaluate()
            best = min(best, val)
            history.append((step, val))
            if log:
                log.line(val_line(step, N, val, time_ms, timed))
            tracker.log_metrics({"val_loss": val, "train_time_ms": time_ms}, step)
            if env.is_main and r.diag_every and (step % r.diag_every == 0 or last):
                tracker.log_metrics(run_diagnostics(), step)
            if on_val is not None and on_val(step, val) and not last:
                status, reason = "EARLY_STOPPED", f"stopped by the scheduler at step {step}"
                break
            _sync(device)
            clock.start()
        want_ckpt = stop.requested(env) or (r.checkpoint_every and step % r.checkpoint_every == 0 and step > 0) \
            or (last and r.save_final)
        if want_ckpt:
            _sync(device)
            clock.pause()
            time_ms = clock.total_ms(step)
            save(step)
            _sync(device)
            clock.start()
            if stop.is_set and not last:
                status, reason = "KILLED", f"stopped by signal {stop.signal_name} at step {step}; checkpoint saved"
                break
        if last:
            break

        # ------------------------------------------------------------ one optimizer step
        loss_sum: torch.Tensor | float = 0.0  # every micro-batch's loss: a NaN in any of them shows in the sum
        for i in range(1, geo.accum + 1):
            with startup.phase("forward", sync=True), autocast:  # timed in the first step only
                loss = ddp(to_device(x, device), to_device(y, device))
            train_loss = loss.detach()
            loss_sum = loss_sum + train_loss.float()
            x, y = train_loader.next_batch()
            sync_ctx = ddp.no_sync() if (isinstance(ddp, DDP) and i < geo.accum) else contextlib.nullcontext()
            with sync_ctx, startup.phase("backward", sync=True):
                loss.backward()
        if geo.accum > 1:  # the reference divides the summed grads (bitwise the same as per-tensor /=)
            torch._foreach_div_([p.grad for p in model.parameters() if p.grad is not None], geo.accum)
        factor = lr_factor(step, num_iterations=N, warmup_iters=cfg.optim.warmup_iters,
                           warmdown_iters=cfg.optim.warmdown_iters)
        with startup.phase("optimizer step", sync=True):
            overflow = _optimizer_step((adam, muon), factor)
            model.zero_grad(set_to_none=True)

        check = torch.as_tensor(math.inf if overflow else loss_sum, device=device).reshape(1).clone()
        env.all_reduce_sum(check)  # every rank sees a non-finite loss on any rank at the same step
        local_loss = train_loss.item()
        if not math.isfinite(check.item()):
            status, reason = "FAILED", f"non-finite loss at step {step + 1}"
            if overflow:
                reason = (f"non-finite update at step {step + 1}: learning_rate={cfg.optim.learning_rate:g} "
                          "overflows the optimizer's float32 arithmetic")
            if log:
                log.line(f"step:{step + 1}/{N} train_loss:{local_loss:.4f} {reason}")
            break
        if env.is_main and step == start_step:  # where start-up time goes (bench/README.md)
            logger.info(startup.line(t_start, t_setup, f"{megacache.hit_counts()}; compile timers: "
                                     f"{megacache.compile_timers()}" if compiled else ""))
        startup.open = False
        if env.is_main and ((step + 1) % r.log_every == 0 or step + 1 == N):
            approx = clock.total_ms(step + 1)
            if log:
                log.line(train_line(step + 1, N, local_loss, approx, timed))
            tracker.log_metrics({"train_loss": local_loss, "step_avg_ms": approx / timed if timed == timed else
                                 math.nan, "lr": adam.param_groups[0]["lr"]}, step + 1)
    if compiled and r.save_compile_cache and env.is_main:
        logger.info(megacache.save(r.save_compile_cache))
    return _finish(cfg, env, tracker, log, run_id, status, reason, step, history, best, time_ms, gpu, sha,
                   dirty, device)


def _optimizer_step(optimizers: tuple, factor: float) -> bool:
    """Step every optimizer at the scheduled LR; True if an update overflowed float32 (AdamW divides the
    LR by its bias correction: learning_rate=1e38 raises inside torch instead of giving inf)."""
    for opt in optimizers:
        for g in opt.param_groups:
            g["lr"] = g["initial_lr"] * factor
        try:
            opt.step()
        except RuntimeError as e:
            if "overflow" not in str(e):
                raise
            return True
    return False


def _finish(cfg: TrainConfig, env: dist.DistEnv, tracker: Tracker, log: RunLog | None, run_id: str, status: str,
            reason: str, step: int, history: list, best: float, time_ms: float, gpu: str, sha: str, dirty: bool,
            device: torch.device) -> RunSummary:
    N = cfg.run.num_iterations
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else 0.0
    final = history[-1][1] if history and history[-1][0] == N else math.nan
    ms_per_step = time_ms / (N - 10) if N > 11 and status == "FINISHED" else math.nan
    summary = RunSummary(run_id, status, reason, step, final, best if history else math.nan, time_ms, ms_per_step,
                         peak, [tuple(h) for h in history], str(log.path) if log else "")
    if log:
        if reason:
            log.line(reason)
        log.line(f"peak memory consumption: {int(peak)} MiB")
        log.close()
    if env.is_main:
        out = Path(cfg.run.out_dir)
        curve = out / "curve.csv"
        curve.write_text("step,val_loss\n" + "".join(f"{s},{v}\n" for s, v in history))
        tracker.log_artifact(curve)
        if log:
            tracker.log_artifact(log.path)
        tracker.log_summary({"final_val_loss": final, "best_val_loss": summary.best_val_loss,
                             "train_time_ms": time_ms, "ms_per_step": ms_per_step, "peak_mem_mib": peak,
                             "final_step": step})
        if status == "FINISHED":  # before the status: a kill in between re-delivers the row on restart
            _record_result(cfg.run.results_csv, {
                "run_id": run_id, "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
                "git_commit": sha[:12] + ("-dirty" if dirty else ""), "seed": cfg.run.seed,
                "attn_gate": cfg.model.attn_gate, "gate_pos": cfg.model.gate_pos, "gate_act": cfg.model.gate_act,
                "learning_rate": cfg.optim.learning_rate, "batch_size": cfg.data.batch_size,
                "device_batch_size": cfg.data.device_batch_size, "sequence_length": cfg.data.sequence_length,
                "num_iterations": N, "warmdown_iters": cfg.optim.warmdown_iters, "final_val_loss": round(final, 6),
                "best_val_loss": round(summary.best_val_loss, 6), "train_time_ms": round(time_ms),
                "ms_per_step": round(ms_per_step, 2), "gpu_name": gpu, "n_gpus": env.world_size,
                "notes": cfg.run.notes})
        tracker.finish(status, reason)
    return summary


def _record_result(path: str, row: dict) -> None:
    """The results.csv row, once per run_id (a restarted run that finished before adds none)."""
    try:
        append_result(path, row)
    except OSError as e:
        raise StorageError(f"results_csv={path}: cannot append this run's row ({e.strerror}); make it writable "
                           "and run again with the same run_id: it resumes from its last checkpoint and writes "
                           "the row once") from e
