"""One rank of a data-parallel run: `torchrun --nproc-per-node N -m unifork.train --config X --out DIR`.

Takes the flags of `unifork train`; torchrun's environment (RANK, WORLD_SIZE) tells it which rank of how many.
"""

import sys

from unifork.errors import OneLineParser, UserError, flag_names, one_line
from unifork.train.command import add_train_arguments, run_train


def main(argv: list[str]) -> int:
    parser = OneLineParser(prog="python -m unifork.train", description=__doc__)
    add_train_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_train(args)
    except (UserError, FileNotFoundError) as err:
        print(f"error: {one_line(err, flag_names(parser))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
