"""Train the bundled world model (see hero_compile/world/train.py): ``python examples/world_model/train.py``."""

from hero_compile.world.train import main

if __name__ == "__main__":
    main()
