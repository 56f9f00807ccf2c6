"""The `unifork` command: a thin shell that parses flags and calls library functions of the same names."""

from __future__ import annotations

import argparse
import sys
import traceback

from unifork.errors import UserError


def _cmd_world(args: argparse.Namespace) -> None:
    from unifork.world.export import export_prompt_scenes, export_world

    if args.prompt is not None:
        n = export_prompt_scenes(args.out, args.prompt, n=args.n, seed=args.seed)
        print(f"wrote {n} scenes satisfying '{args.prompt}' to {args.out} (PNGs + meta.jsonl)")
        return
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

    quickstart(args.out, recipe=args.recipe)


def _cmd_train(args: argparse.Namespace) -> None:
    from unifork.train.trainer import train

    final = train(args.config, args.out, resume=args.resume, device=args.device, max_steps=args.max_steps)
    if final is not None:
        print(f"training finished; final checkpoint in {final} (use it as --ckpt)")


def _cmd_generate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from unifork.inference.pipeline import Pipeline, image_grid

    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out must be a PNG file path, but {out} is a directory")
    pipe = Pipeline.from_pretrained(args.ckpt, task="gen", device=args.device)
    images = pipe.generate(args.prompt, n=args.n, cfg_scale=args.cfg, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, seed=args.seed)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(images).save(out, format="PNG")
    print(f"wrote a grid of {len(images)} images to {out}")
    if args.save_dir:
        save_dir = Path(args.save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(images):
            image.save(save_dir / f"{i:03d}.png")
        print(f"wrote {save_dir / '000.png'} ... {save_dir / f'{len(images) - 1:03d}.png'}")


def _cmd_ask(args: argparse.Namespace) -> None:
    from unifork.inference.pipeline import Pipeline

    pipe = Pipeline.from_pretrained(args.ckpt, task="und", device=args.device)
    print(pipe.ask(args.image, args.question))  # the answer alone, so scripts can capture it


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unifork", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="render scenes of the shapes world to PNGs + meta.jsonl")
    world.add_argument("--n", type=int, default=64, help="number of scenes")
    world.add_argument("--split", default="train", help="train | val | test | heldout")
    world.add_argument("--seed", type=int, default=0, help="world seed (same seed, same scenes)")
    world.add_argument("--prompt", default=None, help='sample scenes from a prompt instead, e.g. "two red circles"')
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
    qs.add_argument("--recipe", default=None, help="training recipe (default: configs/quickstart.toml)")
    qs.set_defaults(func=_cmd_quickstart)

    tr = sub.add_parser("train", help="run the stages of a training recipe (TOML)")
    tr.add_argument("--config", required=True, help="recipe file, e.g. configs/quickstart.toml")
    tr.add_argument("--out", required=True, help="run directory (stages/, checkpoint/, metrics.jsonl)")
    tr.add_argument("--resume", action="store_true", help="continue a run in --out: skip finished stages, resume the cut one")
    tr.add_argument("--device", default=None, help="cpu | cuda (default: cuda when available)")
    tr.add_argument("--max-steps", type=int, default=None,
                    help="stop after this many steps (checkpointed; continue later with --resume)")
    tr.set_defaults(func=_cmd_train)

    gen = sub.add_parser("generate", help="sample images for a text prompt from a checkpoint")
    gen.add_argument("--ckpt", required=True, help="checkpoint directory (written by save_pretrained)")
    gen.add_argument("--prompt", required=True, help="caption to draw, e.g. 'two red circles'")
    gen.add_argument("--n", type=int, default=4, help="number of images")
    gen.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (1 = no guidance)")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    gen.add_argument("--top-k", type=int, default=0, help="sample among the k most likely codes (0 = off)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0 = off)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    gen.add_argument("--out", required=True, help="output PNG: all images in a grid with 2 px white gaps")
    gen.add_argument("--save-dir", default=None, help="also write each image as DIR/000.png, 001.png, ...")
    gen.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    gen.set_defaults(func=_cmd_generate)

    ask = sub.add_parser("ask", help="answer a question about an image from a checkpoint (prints the answer alone)")
    ask.add_argument("--ckpt", required=True, help="checkpoint directory (written by save_pretrained)")
    ask.add_argument("--image", required=True, help="image file (any mode/size; converted to RGB, resized)")
    ask.add_argument("--question", required=True, help="question, e.g. 'what color is the circle?'")
    ask.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ask.set_defaults(func=_cmd_ask)
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
