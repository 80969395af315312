"""diffusers' context parallelism (Ulysses and Ring) on CPU ranks, for the tests and the benchmark.

On GPUs nothing here is needed: ``torchrun`` with NCCL, ``model.enable_parallelism(...)``, then ``torch.compile``.
On CPU (gloo), diffusers needs three workarounds that are diffusers' business, not hero's; they live here, used
only by ``tests/test_context_parallel.py`` and ``benchmarks/context_parallel.py``:

- ``enable_parallelism`` places the rank on device ``rank % torch.accelerator.device_count()``, which divides by
  zero on a CPU build: the device count reads 1 around the call;
- Ring attention merges partial results by their log-sum-exp, which diffusers' native attention does not return:
  a native attention op that returns it (plain math);
- Wan's ``_cp_plan`` entry ``""`` (for a 2-D timestep) logs through ``warning_once``, which exists only once
  ``transformers`` is imported: the plan is passed without that entry;

and, on every device, the model is called once eagerly before compiling: diffusers' split hook reads the forward
signature lazily, which Dynamo cannot trace.
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from unittest import mock

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

Worker = Callable[..., Any]
"""``worker(rank, world_size, *args)``: runs on each rank; its return value comes back."""


def spawn(worker: Worker, world_size: int, *args: Any) -> list[Any]:
    """Run ``worker`` on ``world_size`` CPU processes joined by a gloo process group; every rank's result, in
    rank order."""
    context = mp.get_context("spawn")
    port = _free_port()
    with tempfile.TemporaryDirectory() as folder:
        processes = [context.Process(target=_run_rank, args=(worker, rank, world_size, port, folder, args))
                     for rank in range(world_size)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
        failed = [p.exitcode for p in processes if p.exitcode != 0]
        if failed:
            raise RuntimeError(f"a context-parallel rank failed (exit codes {failed}); its traceback is above")
        return [torch.load(Path(folder, f"{rank}.pt"), weights_only=False) for rank in range(world_size)]


def _run_rank(worker: Worker, rank: int, world_size: int, port: int, folder: str, args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        torch.save(worker(rank, world_size, *args), Path(folder, f"{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def enable_context_parallelism(model: Any, kind: str, degree: int,
                               first_call: Callable[[torch.nn.Module], Any]) -> None:
    """``model.enable_parallelism`` with ``ulysses_degree`` or ``ring_degree`` (``kind``) on CPU ranks, then
    ``first_call(model)`` run eagerly. ``model`` is a diffusers model (typed ``Any``: mypy does not see diffusers'
    models as modules)."""
    from diffusers import ContextParallelConfig

    config = ContextParallelConfig(**{f"{kind}_degree": degree})
    plan = {name: entry for name, entry in type(model)._cp_plan.items() if not _needs_transformers(name, entry)}
    with mock.patch.object(torch.accelerator, "device_count", return_value=1):
        model.enable_parallelism(config=config, cp_plan=plan)
    _use_attention_returning_lse()
    with torch.no_grad():
        first_call(model)


def _needs_transformers(name: str, entry: Any) -> bool:
    # Wan's whole-model entry shards a 2-D timestep only; given a 1-D one it warns through `warning_once`.
    return name == "" and set(entry) == {"timestep"}


def _use_attention_returning_lse() -> None:
    from diffusers.models import attention_dispatch

    attention_dispatch._native_attention_forward_op = _attention_forward_op


def _attention_forward_op(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                          scale: float | None = None, enable_gqa: bool = False, return_lse: bool = False,
                          _save_ctx: bool = True, _parallel_config: Any = None) -> Any:
    """diffusers' native forward op over ``(batch, tokens, heads, dim)``, with the log-sum-exp Ring needs."""
    q, k, v = (x.permute(0, 2, 1, 3) for x in (query, key, value))
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, -torch.inf) if attn_mask.dtype == torch.bool else scores + attn_mask
    out = (torch.softmax(scores, dim=-1) @ v).permute(0, 2, 1, 3)
    if not return_lse:
        return out
    return out, torch.logsumexp(scores, dim=-1).permute(0, 2, 1)

