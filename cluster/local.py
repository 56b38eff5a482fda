"""Start an embedded local Ray, or connect to an existing cluster, the same way everywhere."""
from __future__ import annotations

import os

RAY_ENV = {"RAY_TRAIN_V2_ENABLED": "0", "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0"}


def init_ray(address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
             quiet: bool = True):
    """``address=None`` starts a private local Ray on 127.0.0.1 (dashboard off); otherwise connect."""
    os.environ.update({k: v for k, v in RAY_ENV.items() if k not in os.environ})
    import ray

    if ray.is_initialized():
        return ray
    kwargs = dict(runtime_env={"env_vars": dict(RAY_ENV)}, log_to_driver=not quiet,
                  logging_level="ERROR" if quiet else "INFO")
    if address:
        if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"):  # a submitted job's driver: the job's runtime
            kwargs.pop("runtime_env")                      # env (code, requirements, RAY_ENV) applies
        ray.init(address=address, **kwargs)
    else:
        # address="local": a Ray of its own even when another runs here (ray.init() with no
        # address would join the one /tmp/ray/ray_current_cluster names, and then refuse num_cpus)
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 _node_ip_address="127.0.0.1", **kwargs)
    return ray
