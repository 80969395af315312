"""Train the bundled world model with flow matching on procedurally generated maze clips.

Run: ``python examples/world_model/train.py [--minutes 50] [--smoke]``. Writes the fp16 weights, the config and
the training log next to each other (``world/hero_world/weights/`` by default).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from hero_world.checkpoint import WEIGHTS_DIR, config_path, log_path, weights_path
from hero_world.data import training_batch
from hero_world.model import NULL_ACTION, WorldModel, WorldModelConfig

ACTION_DROPOUT = 0.1
CONTEXT_NOISE = 0.05
EMA_DECAY = 0.998
"""The shipped weights are an exponential moving average of the trained ones, with this decay per step."""


def flow_matching_loss(model: WorldModel, context: torch.Tensor, future: torch.Tensor, actions: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
    """Regression of the clean future frames from points on the straight path from them (t=0) to noise (t=1).

    Actions are dropped (replaced by ``NULL_ACTION``) at random so that guidance on the action works, and the
    context gets a little noise so that rollouts tolerate their own imperfect predictions as context.
    """
    b = future.shape[0]
    t = torch.sigmoid(torch.randn(b, generator=generator))
    noise = torch.randn(future.shape, generator=generator)
    noisy = (1 - t)[:, None, None, None, None] * future + t[:, None, None, None, None] * noise
    dropped = torch.rand(b, generator=generator) < ACTION_DROPOUT
    actions = torch.where(dropped[:, None], torch.full_like(actions, NULL_ACTION), actions)
    context = context + CONTEXT_NOISE * torch.rand(b, 1, 1, 1, 1, generator=generator) * torch.randn(
        context.shape, generator=generator
    )
    return F.mse_loss(model.predict_clean(noisy, context, actions, t * 1000.0), future)


def train(minutes: float, batch: int, learning_rate: float, seed: int, out_dir: Path, max_steps: int | None,
          compile_loss: bool = False) -> Path:
    torch.manual_seed(seed)
    config = WorldModelConfig()
    model = WorldModel(config)
    # Inductor makes a float32 step ~15% faster here once compiled (about a minute); bfloat16 autocast is
    # 10x slower on CPUs without AVX512-BF16, so training stays in float32.
    loss_fn = torch.compile(flow_matching_loss) if compile_loss else flow_matching_loss
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(EMA_DECAY))
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    deadline = time.monotonic() + minutes * 60
    log: list[dict[str, float]] = []
    step, started = 0, time.monotonic()
    progress = tqdm(desc="train world model", unit="step")
    while time.monotonic() < deadline and (max_steps is None or step < max_steps):
        fraction = (time.monotonic() - started) / (minutes * 60)
        warmup = min(1.0, (step + 1) / 100)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * warmup * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))
        context, future, actions = training_batch(rng, batch, config)
        loss = loss_fn(model, context, future, actions, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        averaged.update_parameters(model)
        step += 1
        if step % 25 == 0 or step == 1:
            log.append({"step": step, "seconds": time.monotonic() - started, "loss": loss.item()})
            progress.set_postfix(loss=f"{loss.item():.4f}")
        progress.update()
    progress.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    # The average of the last few hundred steps: 0.4 dB closer to the ground truth than the last step's weights.
    averaged_state = averaged.module.state_dict()
    save_file({k: v.detach().half().contiguous() for k, v in averaged_state.items()}, weights_path(out_dir))
    config_path(out_dir).write_text(json.dumps(config.to_dict(), indent=2))
    log_path(out_dir).write_text(json.dumps({
        "seed": seed, "batch": batch, "learning_rate": learning_rate, "steps": step,
        "minutes": (time.monotonic() - started) / 60, "threads": torch.get_num_threads(),
        "action_dropout": ACTION_DROPOUT, "context_noise": CONTEXT_NOISE, "ema_decay": EMA_DECAY,
        "precision": "float32",
        "compiled": compile_loss, "cpu": platform.processor() or platform.machine(),
        "data": "random training maze seeds in [0, 1_000_000), random exploration actions", "log": log,
    }, indent=2))
    return weights_path(out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=45.0, help="wall-clock training budget")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help=f"output folder (default {WEIGHTS_DIR}; a temporary one with --smoke)")
    parser.add_argument("--compile", action="store_true", help="compile the loss with Inductor (faster after ~1 min)")
    parser.add_argument("--smoke", action="store_true", help="three small steps, for CI")
    args = parser.parse_args(argv)
    if args.smoke:
        out = args.out or Path(tempfile.mkdtemp(prefix="hero-world-smoke-"))
        path = train(1.0, 2, args.learning_rate, args.seed, out, max_steps=3)
    else:
        path = train(args.minutes, args.batch, args.learning_rate, args.seed, args.out or WEIGHTS_DIR, max_steps=None,
                     compile_loss=args.compile)
    print(f"weights written to {path}")


if __name__ == "__main__":
    main()
