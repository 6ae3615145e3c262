"""`--gpus`: one GPU runs in this process; several relaunch the same command under torchrun (data parallel).

torchrun starts one process per GPU with RANK/LOCAL_RANK/WORLD_SIZE set; transformers' Trainer and accelerate
read those and wrap the model in DistributedDataParallel. CUDA_VISIBLE_DEVICES limits the processes to the
chosen GPUs. NCCL's NVLink multicast stays off unless the environment says otherwise.
"""

from __future__ import annotations

import os
import sys

from tunebench.errors import UserError


def parse_gpus(text: str) -> list[str]:
    ids = [part.strip() for part in text.split(",") if part.strip()]
    if not ids or not all(i.isdigit() for i in ids) or len(set(ids)) != len(ids):
        raise UserError(f"--gpus '{text}' is not a list of distinct GPU indices", "e.g. --gpus 0 or --gpus 0,1")
    return ids


def use_gpus(ids: list[str], text: str) -> None:
    """Make exactly these GPUs visible, before CUDA starts in this process, and check they exist."""
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    import torch

    if torch.cuda.device_count() < len(ids):
        raise UserError(f"--gpus {text}: not every one of these CUDA GPUs exists on this machine "
                        f"({torch.cuda.device_count()} of {len(ids)} visible)",
                        "check nvidia-smi for the indices, or train without --gpus (on CPU)")


def inside_launcher() -> bool:
    return "LOCAL_RANK" in os.environ


def relaunch(ids: list[str], cli_args: list[str]) -> tuple[int, bool]:
    """Run `tunebench <cli_args>` once per GPU under torchrun (ids already made visible); returns its exit code
    and whether this process was sent SIGTERM (handed on to torchrun, which stops every worker with it)."""
    from tunebench.train.signals import run_forwarding_sigterm

    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(ids)}
    env.setdefault("NCCL_NVLS_ENABLE", "0")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(ids)}",
               "-m", "tunebench.cli", *cli_args]
    return run_forwarding_sigterm(command, env)
