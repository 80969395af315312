"""Train the bundled world model (see world/hero_world/train.py): ``python examples/world_model/train.py``."""

from hero_world.train import main

if __name__ == "__main__":
    main()
