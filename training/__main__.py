"""`python -m training RECIPE [KEY=VALUE ...] [--resume]`: what torchrun runs in every process.

    torchrun --nproc_per_node 2 -m training tiny-pretrain tokenizer=DIR parallel=ddp

`bielik-quant train` takes the same arguments and runs the same function in one process.
"""

from __future__ import annotations

import argparse
import sys

from training.run import run


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.splitlines()[0])
    parser.add_argument("recipe", help="a recipe in training/recipes/ or a YAML file")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE: any recipe field")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint")
    parser.add_argument(
        "--stop-after", type=int, default=0, help="stop after N steps, with a checkpoint"
    )
    args = parser.parse_args()
    return run(args.recipe, args.overrides, args.resume, args.stop_after)


if __name__ == "__main__":
    sys.exit(main())
