"""The per-worker training loop (Ray Train), optimizers, schedules and checkpoints."""
