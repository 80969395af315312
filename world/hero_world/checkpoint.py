"""Where the shipped world-model weights live, and loading them with errors that say how to fix them."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file

from hero_world.model import WorldModel, WorldModelConfig

WEIGHTS_DIR = Path(__file__).parent / "weights"
RETRAIN = "retrain it with `python examples/world_model/train.py` (45 minutes on 2 CPU cores)"


def weights_path(directory: Path) -> Path:
    return directory / "world_model.safetensors"


def config_path(directory: Path) -> Path:
    return directory / "config.json"


def log_path(directory: Path) -> Path:
    return directory / "training_log.json"


class WeightsError(RuntimeError):
    """The world model's weights are missing or unreadable."""


def load_world_model(directory: Path = WEIGHTS_DIR) -> WorldModel:
    """The trained world model in float32 and eval mode; raises :class:`WeightsError` naming the file."""
    path = weights_path(directory)
    if not path.is_file():
        raise WeightsError(f"world-model weights not found at {path}; {RETRAIN}")
    try:
        config = WorldModelConfig(**json.loads(config_path(directory).read_text()))
        state = load_file(str(path))
        model = WorldModel(config)
        model.load_state_dict({k: v.float() for k, v in state.items()})
    except (OSError, ValueError, TypeError, RuntimeError, SafetensorError) as error:
        raise WeightsError(f"world-model weights at {path} cannot be loaded ({error}); {RETRAIN}") from error
    return model.eval()


def training_log(directory: Path = WEIGHTS_DIR) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(log_path(directory).read_text())
    return loaded

