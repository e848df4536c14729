"""The reference LR schedule: linear warmup, constant, linear warmdown to 0 (a multiplier of the base LR)."""


def lr_factor(step: int, *, num_iterations: int, warmup_iters: int, warmdown_iters: int) -> float:
    """Multiplier for the update taken at `step` (0-based), as the reference's LambdaLR gives it."""
    if step < 0 or step > num_iterations:
        raise ValueError(f"step {step} outside [0, {num_iterations}]")
    if step < warmup_iters:
        return (step + 1) / warmup_iters
    if step < num_iterations - warmdown_iters:
        return 1.0
    return (num_iterations - step) / warmdown_iters
