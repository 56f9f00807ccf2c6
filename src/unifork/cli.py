"""The `unifork` command: a thin shell that parses flags and calls library functions of the same names."""

from __future__ import annotations

import argparse
import sys
import traceback

from unifork.errors import UserError


def _cmd_world(args: argparse.Namespace) -> None:
    from unifork.world.export import export_world

    n = export_world(args.out, n=args.n, split=args.split, seed=args.seed)
    print(f"wrote {n} scenes of split '{args.split}' to {args.out} (PNGs + meta.jsonl)")


def _cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from unifork.tokenizers.train_image import train_image_tokenizer

    report = train_image_tokenizer(args.out, steps=args.steps, seed=args.seed, size=args.size)
    print(
        f"image tokenizer saved to {args.out}: PSNR {report['psnr_heldout']:.2f} dB on held-out scenes, "
        f"codebook usage {100 * report['codebook_usage']:.1f}%, {report['train_seconds']:.0f} s"
    )


def _cmd_tokenizer_reconstruct(args: argparse.Namespace) -> None:
    from unifork.tokenizers.reconstruct import reconstruct_image

    result = reconstruct_image(args.tokenizer, args.image, args.out)
    print(f"{len(result['codes'])} codes, reconstruction PSNR {result['psnr']:.2f} dB, written to {args.out}")


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from unifork.quickstart import quickstart

    quickstart(args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unifork", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="render scenes of the shapes world to PNGs + meta.jsonl")
    world.add_argument("--n", type=int, default=64, help="number of scenes")
    world.add_argument("--split", default="train", help="train | val | test | heldout")
    world.add_argument("--seed", type=int, default=0, help="world seed (same seed, same scenes)")
    world.add_argument("--out", required=True, help="output directory")
    world.set_defaults(func=_cmd_world)

    tok = sub.add_parser("tokenizer", help="image/text tokenizers")
    tok_sub = tok.add_subparsers(dest="tokenizer_command", required=True)
    tok_train = tok_sub.add_parser("train", help="train the VQ image tokenizer (and the text tokenizer) on the world")
    tok_train.add_argument("--out", required=True, help="output directory (config.json + model.safetensors + tokenizer.json)")
    tok_train.add_argument("--steps", type=int, default=None, help="training steps (default: the size preset's)")
    tok_train.add_argument("--size", default="default", help="size preset: default | tiny")
    tok_train.add_argument("--seed", type=int, default=0, help="random seed")
    tok_train.set_defaults(func=_cmd_tokenizer_train)

    tok_rec = tok_sub.add_parser("reconstruct", help="encode an image to codes and decode it back")
    tok_rec.add_argument("--tokenizer", required=True, help="image tokenizer directory")
    tok_rec.add_argument("--image", required=True, help="input image file (any mode/size; converted to RGB, resized)")
    tok_rec.add_argument("--out", required=True, help="output PNG of the reconstruction")
    tok_rec.set_defaults(func=_cmd_tokenizer_reconstruct)

    qs = sub.add_parser("quickstart", help="the main job: train and evaluate a small UniFork on the shapes world")
    qs.add_argument("--out", default="runs/quickstart", help="output directory")
    qs.set_defaults(func=_cmd_quickstart)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UserError, FileNotFoundError) as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
