"""One rank of a data-parallel run: `torchrun --nproc-per-node N -m unifork.train --config X --out DIR`.

Takes the flags of `unifork train`; torchrun's environment (RANK, WORLD_SIZE) tells it which rank of how many.
"""

import sys

from unifork.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
