"""The `unifork` command: a thin shell that parses flags and calls library functions of the same names."""

from __future__ import annotations

import argparse
import sys
import traceback

from unifork.errors import OneLineParser, UserError, flag_names, one_line
from unifork.train.command import add_train_arguments, run_train


def _cmd_world(args: argparse.Namespace) -> None:
    from unifork.world.export import export_prompt_scenes, export_world

    if args.prompt is not None:
        n = export_prompt_scenes(args.out, args.prompt, n=args.n, seed=args.seed)
        print(f"wrote {n} scenes satisfying '{args.prompt}' to {args.out} (PNGs + meta.jsonl)")
        return
    n = export_world(args.out, n=args.n, split=args.split, seed=args.seed)
    print(f"wrote {n} scenes of split '{args.split}' to {args.out} (PNGs + meta.jsonl)")


def _cmd_tokenizer_train(args: argparse.Namespace) -> None:
    from unifork.train.image_tokenizer import REPORT_FILE, SHEET_FILE, TokenizerData, train_image_tokenizer

    data = TokenizerData(source=args.data, eval_source=args.eval_data, image_size=args.image_size, downsample=args.downsample,
                         residual_depth=args.residual_depth)  # fmt: skip
    report = train_image_tokenizer(args.out, steps=args.steps, seed=args.seed, size=args.size, data=data,
                                   batch_size=args.batch_size, resume=args.resume, max_steps=args.max_steps)  # fmt: skip
    if report is None:
        return
    print(
        f"image tokenizer saved to {args.out}: PSNR {report['psnr_heldout']:.2f} dB, SSIM {report['ssim_heldout']:.3f} "
        f"on {report['n_heldout']} held-out images, codebook usage {100 * report['codebook_usage']:.1f}%, "
        f"{report['train_seconds']:.0f} s; {REPORT_FILE} and {SHEET_FILE} beside it"
    )


def _cmd_tokenizer_from_hf(args: argparse.Namespace) -> None:
    from unifork.tokenizers.from_hf import import_image_tokenizer

    cfg = import_image_tokenizer(args.model, args.out, image_size=args.image_size)
    print(f"imported a {cfg['kind']} image tokenizer into {args.out}: {cfg['image_size']} px images, a {cfg['grid']}x{cfg['grid']} "
          f"grid of {cfg['num_codes']} codes, latents of width {cfg['latent_dim']}")  # fmt: skip


def _cmd_tokenizer_reconstruct(args: argparse.Namespace) -> None:
    from unifork.tokenizers.reconstruct import reconstruct_image

    result = reconstruct_image(args.tokenizer, args.image, args.out)
    print(f"{len(result['codes'])} codes, reconstruction PSNR {result['psnr']:.2f} dB, written to {args.out}")


def _cmd_tokenizer_eval(args: argparse.Namespace) -> None:
    from unifork.eval.tokenizer_eval import evaluate_tokenizer

    result = evaluate_tokenizer(args.tokenizer, args.out, n_images=args.images, prompts_per_category=args.prompts)
    codes, rec, ceiling = result["codes"], result["reconstruction"], result["ceiling"]["accuracy"]
    print(f"{codes['positions']} positions x {codes['residual_depth']} codes of {codes['codes_per_level']}: PSNR "
          f"{rec['test']['psnr']:.2f} dB (test), {rec['heldout']['psnr']:.2f} dB (held-out compositions); exact rule on "
          f"round trips {ceiling['overall']:.3f} overall" + (f"; wrote {args.out}" if args.out else ""))  # fmt: skip


def _cmd_quickstart(args: argparse.Namespace) -> None:
    from unifork.quickstart import quickstart

    quickstart(args.out, recipe=args.recipe)


def _cmd_generate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from unifork.inference.pipeline import Pipeline, image_grid

    _check_text(args.prompt, "--prompt", "'two red circles'")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out must be a PNG file path, but {out} is a directory")
    pipe = Pipeline.from_pretrained(args.ckpt, task="gen", device=args.device)
    images = pipe.generate(args.prompt, n=args.n, cfg_scale=args.cfg_scale, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, speculative=args.speculative, seed=args.seed)  # fmt: skip
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

    _check_text(args.question, "--question", "'what color is the circle?'")
    pipe = Pipeline.from_pretrained(args.ckpt, task="und", device=args.device)
    print(pipe.ask(args.image, args.question))  # the answer alone, so scripts can capture it


def _cmd_fork_hf(args: argparse.Namespace) -> None:
    from unifork.hf import fork_hf
    from unifork.model.sharing import describe

    info = fork_hf(args.model, args.fork_layer, args.out, image_tokenizer_dir=args.image_tokenizer,
                   vision_encoder_dir=args.vision_encoder, vision_layer=args.vision_layer, sharing=args.sharing)  # fmt: skip
    counts = ", ".join(f"{name} {n / 1e6:.1f}M" for name, n in info["parameters"].items())
    print(f"forked {info['architecture']} ({info['n_layers']} layers: {describe(info['sharing'])}) into {args.out} "
          f"({counts}); use it as --ckpt")  # fmt: skip


def _cmd_export_hf(args: argparse.Namespace) -> None:
    from unifork.hf import export_hf

    info = export_hf(args.ckpt, args.out)
    print(f"wrote the understanding path as {info['architecture']} ({info['parameters'] / 1e6:.1f}M parameters) to {args.out}")


def _cmd_info(args: argparse.Namespace) -> None:
    from unifork.model_card import checkpoint_facts, summary_lines

    print("\n".join(summary_lines(checkpoint_facts(args.ckpt))))


def _cmd_bench(args: argparse.Namespace) -> None:
    from unifork.bench import bench_settings, run_bench, summary_lines

    settings = bench_settings(quick=args.quick, size=args.size, repeats=args.repeats)
    result = run_bench(args.out, settings, threads=args.threads, ckpt=args.ckpt)
    print("\n".join(summary_lines(result)))
    print(f"wrote {args.out}")


def _cmd_study(args: argparse.Namespace) -> None:
    from unifork.study import run_study

    plans = tuple(p.strip() for p in args.plans.split(",") if p.strip()) if args.plans else None
    seeds = tuple(_int_list(args.seeds, "--seeds")) if args.seeds else None
    study = run_study(args.out, quick=args.quick, plans=plans, seeds=seeds, tokenizer_dir=args.tokenizer_dir,
                      steps=args.steps, results_dir=args.results, recipe=args.recipe)  # fmt: skip
    for row in study["by_plan"]:
        print(f"{'/'.join(row['labels'])} {row['plan']}: VQA {row['vqa']['mean']:.3f} ± {row['vqa']['std']:.3f}, "
              f"ShapeEval exact {row['gen_exact']['mean']:.3f} ± {row['gen_exact']['std']:.3f}")  # fmt: skip
    print(f"wrote {args.results or args.out + '/results'}: one result per model, study.md, study.json, plots")


def _cmd_data_pretokenize(args: argparse.Namespace) -> None:
    from unifork.data import pretokenize

    meta = pretokenize(args.source, args.tokenizer, args.out, latents=not args.no_latents, batch_size=args.batch_size)
    print(f"encoded {meta['records'] - meta['corrupt']} images of {args.source} into {len(meta['shards'])} shards in "
          f"{args.out} ({meta['corrupt']} corrupt, kept as skipped rows); train on it with "
          f'[data] source = "pretokenized:{args.out}"')  # fmt: skip


def _check_text(text: str, flag: str, example: str) -> None:
    """A prompt or question from argv: not blank (an unset shell variable), and UTF-8 (argv keeps other bytes as
    lone surrogates)."""
    if not text.strip():
        raise UserError(f"{flag} is empty; give text, e.g. {flag} {example}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"{flag} is not valid UTF-8 text: {ascii(text[:80])}") from None


def _int_list(text: str, flag: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} takes comma-separated integers, e.g. 0,2,4; got '{text}'") from None


def _cmd_probe(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from unifork.analysis.answer_probe import answer_probe
    from unifork.atomic import atomic_write_text
    from unifork.inference.pipeline import Pipeline
    from unifork.world.questions import QUESTION_TYPES

    if args.qtype not in QUESTION_TYPES:
        raise UserError(f"unknown --qtype '{args.qtype}'; choose one of: {', '.join(QUESTION_TYPES)}")
    result = answer_probe(Pipeline.from_pretrained(args.ckpt, task="und", device=args.device), args.qtype,
                          n_train=args.n_train, n_test=args.n_test, target=args.target)  # fmt: skip
    atomic_write_text(Path(args.out), json.dumps(result, indent=2))
    layers = ", ".join(f"{layer}: {acc:.2f}" for layer, acc in zip(result["layers"], result["probe_accuracy"]))
    print(f"{args.qtype} {args.target}: probe accuracy per layer (plan {result['sharing']}) {layers}; the model answers "
          f"{result['model_accuracy']:.3f} (majority {result['majority_baseline']:.3f}, {result['n_test']} questions)")


def _cmd_conflict(args: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    from unifork.analysis.conflict import task_conflict
    from unifork.analysis.model_alignment import model_alignment
    from unifork.analysis.plot import plot_conflict
    from unifork.analysis.recommend import recommend_plan
    from unifork.atomic import atomic_write_text
    from unifork.inference.pipeline import Pipeline
    from unifork.model.sharing import describe

    for flag, value in (("--n-batches", args.n_batches), ("--batch-size", args.batch_size)):
        if value < 2:
            raise UserError(f"{flag} must be at least 2 (an interval needs two batches; a batch, a row per task), got {value}")
    if args.align_samples < 2:
        raise UserError(f"--align-samples must be at least 2 (a scene needs a neighbour), got {args.align_samples}")
    pipeline = Pipeline.from_pretrained(args.ckpt, device=args.device)
    if len(pipeline.model.tasks) < 2:
        raise UserError(f"{args.ckpt} holds only the {pipeline.model.tasks[0]} branch; task conflict needs both")
    result = task_conflict(pipeline.model, pipeline.image_tokenizer, pipeline.builder, n_batches=args.n_batches,
                           batch_size=args.batch_size, seed=args.seed) | {"ckpt": str(args.ckpt)}  # fmt: skip
    alignment = model_alignment(pipeline, n=args.align_samples, k=min(10, args.align_samples - 1))
    result["alignment"] = {key: alignment[key] for key in ("k", "n_samples", "chance", "und", "gen")}
    result["recommendation"] = recommend_plan(result, alignment)
    atomic_write_text(Path(args.out), json.dumps(result, indent=2))
    if args.plot:
        plot_conflict(result, args.plot)
    for layer in result["layers"]:
        if layer["shared"]:
            cos, ratio = layer["cosine"], layer["norm_ratio"]
            print(f"layer {layer['layer']}: cosine {cos['mean']:+.3f} [{cos['ci95'][0]:+.3f}, {cos['ci95'][1]:+.3f}], "
                  f"|und| / |gen| {ratio['mean']:.2f}")  # fmt: skip
        else:
            print(f"layer {layer['layer']}: per task")
    plan = result["recommendation"]["plan"]
    print(f"recommended sharing plan: {plan} ({describe(plan)}); analysis/recommend.py has the rule, the JSON each layer's reason")
    if pipeline.model.cfg.plan != "s" * len(plan):
        print("note: the rule is meant for a fully shared model; this one's per-task layers stay per task")
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


def _cmd_align(args: argparse.Namespace) -> None:
    from unifork.analysis.align import align_checkpoint, align_features, align_hf_model

    given = [flag for flag, value in (("--ckpt", args.ckpt), ("--hf-model", args.hf_model), ("--features", args.features))
             if value is not None]  # fmt: skip
    if len(given) != 1:
        raise UserError(f"give exactly one feature source of --ckpt, --hf-model or --features; got {' and '.join(given) or 'none'}")
    hf_inputs = [flag for flag, value in (("--texts", args.texts), ("--image-features", args.image_features)) if value is not None]
    if args.hf_model is None and hf_inputs:
        raise UserError(f"{' and '.join(hf_inputs)} only go with --hf-model")
    if args.ckpt is not None:
        result = align_checkpoint(args.ckpt, args.out, plot=args.plot, n=args.n, k=args.k, pooling=args.pooling,
                                  seed=args.seed, device=args.device)  # fmt: skip
    elif args.hf_model is not None:
        if len(hf_inputs) != 2:
            raise UserError("--hf-model needs --texts FILE (one text per line) and --image-features FILE.npy (one row per text)")
        result = align_hf_model(args.hf_model, args.texts, args.image_features, args.out, plot=args.plot, k=args.k,
                                pooling=args.pooling, device=args.device)  # fmt: skip
    else:
        result = align_features(args.features, args.out, plot=args.plot, k=args.k)
    for name in result["paths"]:
        print(f"{name}: " + " ".join(f"{v:.3f}" for v in result[name]))
    print(f"wrote {args.out}" + (f" and {args.plot}" if args.plot else ""))


def _cmd_data_digits(args: argparse.Namespace) -> None:
    from unifork.data.digits import write_digits

    counts = write_digits(args.out, image_size=args.image_size, seed=args.seed)
    print(f"wrote {counts['train']} training and {counts['test']} test scans to {args.out} "
          f"(sources folder:{args.out}/train.jsonl and folder:{args.out}/test.jsonl)")  # fmt: skip


def _cmd_eval(args: argparse.Namespace) -> None:
    from unifork.eval.suite import EvalSettings, run_eval, summary_lines
    from unifork.inference.settings import SamplingSettings

    settings = EvalSettings(suite=args.suite, images_per_prompt=args.images_per_prompt,
                            prompts_per_category=args.prompts_per_category, sampling=SamplingSettings(cfg_scale=args.cfg_scale, speculative=args.speculative),
                            vqa_scenes=args.vqa_scenes, seed=args.seed, device=args.device,
                            inception_weights=args.inception_weights, digits=args.digits,
                            vqa_file=args.vqa_file)  # fmt: skip
    result = run_eval(args.ckpt, args.out, settings)
    print("\n".join(summary_lines(result)))
    print(f"wrote {args.out} in {result['wall_seconds']:.0f} s")


def _cmd_serve(args: argparse.Namespace) -> None:
    from unifork.serve import serve

    serve(args.ckpt, host=args.host, port=args.port, task=args.task, max_batch=args.max_batch, queue=args.queue,
          timeout=args.timeout, device=args.device, admin=args.admin, ui=not args.no_ui,
          served_model_name=args.served_model_name)  # fmt: skip


def _cmd_loadtest(args: argparse.Namespace) -> None:
    from unifork.serve.loadtest import loadtest, summary_lines, write_json

    result = loadtest(args.url, concurrency=args.concurrency, requests=args.requests, kind=args.kind, n=args.n,
                      sequential_baseline=args.sequential_baseline, time_limit=args.time_limit, api=args.api)  # fmt: skip
    print("\n".join(summary_lines(result)))
    if args.json:
        write_json(result, args.json)
        print(f"wrote {args.json}")


SAMPLING_FLAGS = {"cfg_scale": "--cfg", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
                  "speculative": "--speculative"}  # fmt: skip


def _add_sampling_arguments(parser: argparse.ArgumentParser, *names: str) -> None:
    """Flags for these sampling settings, with the defaults and help of unifork.inference.settings."""
    from unifork.inference.settings import DEFAULTS, SPECULATIVE_WINDOW, SamplingSettings

    for name in names:
        default = getattr(DEFAULTS, name)
        # a bare --speculative asks for the measured window (docs/performance.md, figure 6)
        bare = {"nargs": "?", "const": SPECULATIVE_WINDOW} if name == "speculative" else {}
        alone = f"; alone: {SPECULATIVE_WINDOW}" if bare else ""
        parser.add_argument(SAMPLING_FLAGS[name], dest=name, type=type(default), default=default, **bare,
                            help=f"{SamplingSettings.help(name)}; default %(default)s{alone}")  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    from unifork.eval.suite import EvalSettings  # light: no torch, so `unifork --help` stays fast
    from unifork.inference.settings import DEFAULT_IMAGES

    parser = OneLineParser(prog="unifork", description=__doc__)
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
    tok_train = tok_sub.add_parser("train", help="train the VQ image tokenizer (and the text tokenizer) on the world or your images")
    tok_train.add_argument("--out", required=True, help="output directory (config.json + model.safetensors + tokenizer.json)")
    tok_train.add_argument("--data", default="world", help="world, or a source as in a recipe's [data]: folder:PATH, "
                           "webdataset:GLOB, hf:PATH, parquet:GLOB (streamed, shuffled; corrupt images skipped)")  # fmt: skip
    tok_train.add_argument("--eval-data", default="", help="held-out images to measure on (a source); default: 1 in 50 "
                           "records of --data, never trained on")  # fmt: skip
    tok_train.add_argument("--image-size", type=int, default=None, help="pixels per side (default 64); a multiple of --downsample")
    tok_train.add_argument("--downsample", type=int, default=None, help="pixels per code along a side, a power of 2 (default 8: 256 px -> 32x32 codes)")
    tok_train.add_argument("--residual-depth", type=int, default=None, help="codes per position: residual quantization over "
                           "this many levels (default 1: one code per position; VILA-U uses 4)")  # fmt: skip
    tok_train.add_argument("--steps", type=int, default=None, help="training steps (default: the size preset's)")
    tok_train.add_argument("--batch-size", type=int, default=None, help="images per step (default: the size preset's)")
    tok_train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out exactly")
    tok_train.add_argument("--max-steps", type=int, default=None, help="stop after this many steps (checkpointed; continue with --resume)")
    tok_train.add_argument("--size", default="default", help="size preset: default | tiny")
    tok_train.add_argument("--seed", type=int, default=0, help="random seed")
    tok_train.set_defaults(func=_cmd_tokenizer_train)

    tok_hf = tok_sub.add_parser("from-hf", help="import a pretrained image tokenizer (Janus / Emu3 VQ, diffusers VQModel) from a local checkpoint")
    tok_hf.add_argument("--model", required=True, help="local checkpoint folder: the VQ model alone or the full Janus / Emu3 / diffusers pipeline")
    tok_hf.add_argument("--out", required=True, help="new tokenizer directory (accepted wherever a tokenizer directory is)")
    tok_hf.add_argument("--image-size", type=int, default=None, help="pixels per side, where the checkpoint does not fix it (Emu3)")
    tok_hf.set_defaults(func=_cmd_tokenizer_from_hf)

    tok_rec = tok_sub.add_parser("reconstruct", help="encode an image to codes and decode it back")
    tok_rec.add_argument("--tokenizer", required=True, help="image tokenizer directory")
    tok_rec.add_argument("--image", required=True, help="input image file (any mode/size; converted to RGB, resized)")
    tok_rec.add_argument("--out", required=True, help="output PNG of the reconstruction")
    tok_rec.set_defaults(func=_cmd_tokenizer_reconstruct)

    tok_eval = tok_sub.add_parser("eval", help="what an image tokenizer keeps of the world: reconstruction PSNR/SSIM and "
                                  "the exact rule on round trips (the ceiling of any generator on it)")  # fmt: skip
    tok_eval.add_argument("--tokenizer", required=True, help="image tokenizer directory")
    tok_eval.add_argument("--out", default=None, help="also write the figures to this JSON file")
    tok_eval.add_argument("--images", type=int, default=512, help="world scenes per split for PSNR/SSIM")
    tok_eval.add_argument("--prompts", type=int, default=16, help="ShapeEval prompts per category (4 renderings each)")
    tok_eval.set_defaults(func=_cmd_tokenizer_eval)

    qs = sub.add_parser("quickstart", help="the main job: train and evaluate a small UniFork on the shapes world")
    qs.add_argument("--out", default="runs/quickstart", help="output directory")
    qs.add_argument("--recipe", default=None, help="training recipe file (default: the packaged quickstart recipe)")
    qs.set_defaults(func=_cmd_quickstart)

    tr = sub.add_parser("train", help="run the stages of a training recipe (TOML)")
    add_train_arguments(tr)
    tr.set_defaults(func=run_train)

    gen = sub.add_parser("generate", help="sample images for a text prompt from a checkpoint")
    gen.add_argument("--ckpt", required=True, help="checkpoint directory (written by save_pretrained)")
    gen.add_argument("--prompt", required=True, help="caption to draw (not empty), e.g. 'two red circles'")
    gen.add_argument("--n", type=int, default=DEFAULT_IMAGES, help="number of images; default %(default)s")
    _add_sampling_arguments(gen, "cfg_scale", "temperature", "top_k", "top_p", "speculative")
    gen.add_argument("--seed", type=int, default=0, help="random seed (same seed, same images)")
    gen.add_argument("--out", required=True, help="output PNG: all images in a grid with 2 px white gaps")
    gen.add_argument("--save-dir", default=None, help="also write each image as DIR/000.png, 001.png, ...")
    gen.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    gen.set_defaults(func=_cmd_generate)

    ask = sub.add_parser("ask", help="answer a question about an image from a checkpoint (prints the answer alone)")
    ask.add_argument("--ckpt", required=True, help="checkpoint directory (written by save_pretrained)")
    ask.add_argument("--image", required=True, help="image file (any mode/size; prepared as training images are: RGB, centre crop, resize)")
    ask.add_argument("--question", required=True, help="question, e.g. 'what color is the circle?'")
    ask.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ask.set_defaults(func=_cmd_ask)

    fk = sub.add_parser("fork-hf", help="turn a local Qwen2/Llama HF checkpoint into a UniFork checkpoint (forked at a layer, or any sharing plan)")
    fk.add_argument("--model", required=True, help="local HF model directory: config.json, *.safetensors, tokenizer.json")
    fk.add_argument("--fork-layer", type=int, default=None, help="for y (and inverted_y): layers [0, K) are shared (per task); the paper "
                    "forks Qwen2.5-0.5B at 12 of 24")  # fmt: skip
    fk.add_argument("--sharing", default="y", help="sharing plan: y, x, inverted_y, shared, separate or one letter per layer "
                    "(s shared, t per task); every per-task layer starts as a copy of the pretrained one; default %(default)s")  # fmt: skip
    fk.add_argument("--out", required=True, help="output checkpoint directory (usable as --ckpt)")
    fk.add_argument("--image-tokenizer", default=None, help="image tokenizer directory (from `unifork tokenizer train`); default: a fresh untrained one")
    fk.add_argument("--vision-encoder", default=None, help="local SigLIP / CLIP checkpoint (with its preprocessor_config.json): "
                    "its patch features become the understanding input, frozen unless a stage names trunk.vision.*")  # fmt: skip
    fk.add_argument("--vision-layer", type=int, default=-2, help="hidden layer of the vision encoder to read; default %(default)s (LLaVA's)")
    fk.set_defaults(func=_cmd_fork_hf)

    ex = sub.add_parser("export-hf", help="write a checkpoint's understanding path as a standard HF causal LM (Qwen2 or Llama)")
    ex.add_argument("--ckpt", required=True, help="checkpoint directory (written by save_pretrained)")
    ex.add_argument("--out", required=True, help="output HF model directory (AutoModelForCausalLM loads it)")
    ex.set_defaults(func=_cmd_export_hf)

    inf = sub.add_parser("info", help="what a checkpoint is: architecture, parameters, training, evaluation (its model card)")
    inf.add_argument("--ckpt", required=True, help="checkpoint directory")
    inf.set_defaults(func=_cmd_info)

    bn = sub.add_parser("bench", help="speed and memory figures as side-by-side ratios (docs/performance.md)")
    bn.add_argument("--out", required=True, help="output JSON file: headline ratios, raw timings, machine info")
    bn.add_argument("--quick", action="store_true", help="model 'small', fewer repeats: about 3 minutes on 2 CPU cores")
    bn.add_argument("--size", default=None, help="model size: tiny | small | base (default: base; quick: small)")
    bn.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's own choice)")
    bn.add_argument("--ckpt", default=None,
                    help="checkpoint whose gen branch figure 6 (speculative decoding) samples from: how many drafts "
                         "a pass keeps depends on trained weights (default: the bench's random model)")  # fmt: skip
    bn.add_argument("--repeats", type=int, default=None, help=argparse.SUPPRESS)  # tests: fewer timed rounds
    bn.set_defaults(func=_cmd_bench)

    pr = sub.add_parser("probe", help="per layer, a linear probe's accuracy at reading a question type's answer (und path)")
    pr.add_argument("--ckpt", required=True, help="checkpoint directory with the und branch")
    pr.add_argument("--qtype", default="relation", help="question type: color | shape | count | relation | what_left")
    pr.add_argument("--target", default="answer", help="what the probes read: answer, or for relation questions "
                    "first_position | second_position (the named object's cell in a 3 x 3 grid)")
    pr.add_argument("--out", required=True, help="output JSON: probe accuracy per layer, the model's own accuracy")
    pr.add_argument("--n-train", type=int, default=600, help="train-split scenes whose questions fit the probes")
    pr.add_argument("--n-test", type=int, default=300, help="test-split scenes whose questions score them")
    pr.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    pr.set_defaults(func=_cmd_probe)

    cf = sub.add_parser("conflict", help="per shared layer, how the und and gen losses' gradients agree (cosine, norm ratio)")
    cf.add_argument("--ckpt", required=True, help="checkpoint directory with both branches")
    cf.add_argument("--out", required=True, help="output JSON: cosine and norm ratio per layer, with 95%% intervals")
    cf.add_argument("--plot", default=None, help="also write a PNG plot of both against layer")
    cf.add_argument("--n-batches", type=int, default=8, help="joint training batches averaged over")
    cf.add_argument("--batch-size", type=int, default=32, help="rows per batch, half of each task")
    cf.add_argument("--seed", type=int, default=0, help="world seed of the train-split scenes")
    cf.add_argument("--align-samples", type=int, default=256, help="scenes for the alignment curves the recommendation also reads")
    cf.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    cf.set_defaults(func=_cmd_conflict)

    al = sub.add_parser("align", help="per-layer image-text alignment (mutual k-NN) of a model's hidden states")
    al.add_argument("--ckpt", default=None, help="source 1: a UniFork checkpoint directory, measured on world scenes")
    al.add_argument("--hf-model", default=None, help="source 2: a local Hugging Face causal LM directory (needs --texts, --image-features)")
    al.add_argument("--texts", default=None, help="with --hf-model: a text file, one text per line, paired with the feature rows")
    al.add_argument("--image-features", default=None, help="with --hf-model: a .npy (N, D) array of image features, one row per text")
    al.add_argument("--features", default=None, help="source 3: an .npz with arrays 'image' and 'text', each (layers, N, D) or (N, D)")
    al.add_argument("--out", required=True, help="output JSON: alignment per layer of each path")
    al.add_argument("--plot", default=None, help="also write a PNG plot of alignment against layer")
    al.add_argument("--n", type=int, default=256, help="with --ckpt: number of world scenes (image + caption pairs)")
    al.add_argument("--k", type=int, default=10, help="neighbours per sample in mutual k-NN (chance = k / (N - 1))")
    al.add_argument("--pooling", default="mean", help="how positions become one vector per sample: mean | last")
    al.add_argument("--seed", type=int, default=0, help="with --ckpt: world seed of the test-split scenes")
    al.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    al.set_defaults(func=_cmd_align)

    EVAL = EvalSettings()  # the eval flags' defaults are the library's
    ev = sub.add_parser("eval", help="evaluation suite: ShapeEval + domain FID (gen), VQA (und), tokenizer PSNR/SSIM")
    ev.add_argument("--ckpt", required=True, help="checkpoint directory (written by save_pretrained)")
    ev.add_argument("--suite", default="all", help="gen | und | all (gen loads only the gen branch, und only the und branch)")
    ev.add_argument("--out", required=True, help="output JSON file (written atomically)")
    ev.add_argument("--images-per-prompt", type=int, default=EVAL.images_per_prompt,
                    help="images sampled per ShapeEval prompt (GenEval uses 4); default %(default)s")
    ev.add_argument("--prompts-per-category", type=int, default=EVAL.prompts_per_category,
                    help="ShapeEval prompts in each of the six categories; default %(default)s")
    _add_sampling_arguments(ev, "cfg_scale", "speculative")
    ev.add_argument("--vqa-scenes", type=int, default=EVAL.vqa_scenes,
                    help="scenes per VQA split (test, held-out compositions); default %(default)s")
    ev.add_argument("--seed", type=int, default=0, help="seed of prompts, sampling and scenes (same seed, same result)")
    ev.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    ev.add_argument("--inception-weights", default=None,
                    help="local FID Inception-v3 weights file: adds standard FID (needs torch-fidelity; nothing is downloaded)")
    ev.add_argument("--digits", default=None, help="score the handwritten-digits example instead: the folder of `unifork data digits`")
    ev.add_argument("--vqa-file", default=None,
                    help="score the understanding path on a benchmark file instead: JSONL (image path or image_base64, "
                         "question, answer; POPE's text/label) or VLMEvalKit's TSV (base64 image, question, answer, "
                         "options A-D)")  # fmt: skip
    ev.set_defaults(func=_cmd_eval)

    sv = sub.add_parser("serve", help="REST API (/v1, docs at /docs) and web demo (/ui) on one batching engine")
    sv.add_argument("--ckpt", required=True, help="checkpoint directory (written by save_pretrained)")
    sv.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only; the API has no auth)")
    sv.add_argument("--port", type=int, default=7860, help="TCP port")
    sv.add_argument("--task", default="both", help="branches to load: gen | und | both")
    sv.add_argument("--max-batch", type=int, default=16, help="most requests computed together in one batch (1 = no batching)")
    sv.add_argument("--queue", type=int, default=64, help="most requests waiting; more are refused with 429 and Retry-After")
    sv.add_argument("--timeout", type=float, default=60.0, help="seconds a request may wait and compute before a 504")
    sv.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    sv.add_argument("--admin", action="store_true",
                    help="enable PUT /v1/admin/max-batch for loopback clients (what loadtest --sequential-baseline uses)")
    sv.add_argument("--no-ui", action="store_true", help="serve the REST API only, without the Gradio demo")
    sv.add_argument("--served-model-name", default=None,
                    help="the model id of the OpenAI-compatible routes (default: the checkpoint directory's name, the "
                         "run's name for RUN/checkpoint)")  # fmt: skip
    sv.set_defaults(func=_cmd_serve)

    lt = sub.add_parser("loadtest", help="load a running server on this machine: latency, throughput, batching speedup")
    lt.add_argument("--url", required=True, help="server address on this machine, e.g. http://127.0.0.1:7860")
    lt.add_argument("--concurrency", type=int, default=16, help="clients sending at once (at most 256)")
    lt.add_argument("--requests", type=int, default=200, help="requests per run (at most 10000)")
    lt.add_argument("--kind", default="generate", help="generate | ask")
    lt.add_argument("--n", type=int, default=1, help="images per generate request")
    lt.add_argument("--api", default="native", help="native (/v1/generate, /v1/ask) | openai (/v1/images/generations, "
                    "/v1/chat/completions): the same requests through either")  # fmt: skip
    lt.add_argument("--sequential-baseline", action="store_true",
                    help="run the same load again with the server's max batch at 1 and report the speedup (needs serve --admin)")
    lt.add_argument("--time-limit", type=float, default=600.0, help="seconds per run; sending stops after that")
    lt.add_argument("--json", default=None, help="also write the figures to this JSON file")
    lt.set_defaults(func=_cmd_loadtest)

    st = sub.add_parser("study", help="the sharing-pattern study: train shared, Y, X, separate and recommended models, compare")
    st.add_argument("--out", required=True, help="study directory: tokenizer and checkpoints (resumable: finished models are not redone)")
    st.add_argument("--results", default=None, help="directory of the per-model result files and the summary (default OUT/results); "
                    "a model whose result is there is skipped")  # fmt: skip
    st.add_argument("--quick", action="store_true", help="small models, one seed: about 10 minutes on 2 CPU cores")
    st.add_argument("--plans", default=None, help="comma-separated plans: y, x, inverted_y, shared, separate (y and inverted_y "
                    "split at L/2), y:K, letters such as tsssst, recommended (default: shared,y,x,separate,recommended)")  # fmt: skip
    st.add_argument("--seeds", default=None, help="comma-separated seeds (default: 0,1,2; quick: 0)")
    st.add_argument("--steps", type=int, default=None, help="training steps per model (default: the recipe's)")
    st.add_argument("--tokenizer", dest="tokenizer_dir", default=None, help="reuse this tokenizer directory instead of training one")
    st.add_argument("--recipe", default=None,
                    help="training recipe of every model instead of the preset's: a condition of the study, e.g. the "
                         "packaged configs/study_depth12.toml, study_skewed_mix.toml, study_small_data.toml, "
                         "study_gen_pretrained.toml")  # fmt: skip
    st.set_defaults(func=_cmd_study)

    data = sub.add_parser("data", help="image-text data on disk for training (formats: docs/scale.md, Real data)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    pt = data_sub.add_parser("pretokenize", help="encode every image once with the frozen image tokenizer")
    pt.add_argument("--source", required=True,
                    help="folder:PATH | webdataset:GLOB | hf:PATH | parquet:GLOB (as [data] source in a recipe)")
    pt.add_argument("--tokenizer", required=True, help="tokenizer directory of the run that will train on it")
    pt.add_argument("--out", required=True, help="output folder; use it as [data] source = \"pretokenized:OUT\"")
    pt.add_argument("--no-latents", action="store_true",
                    help="store codes only, not latents (latent_dim times smaller; enough for und_input = \"codes\" models)")
    pt.add_argument("--batch-size", type=int, default=256, help="images per tokenizer call")
    pt.set_defaults(func=_cmd_data_pretokenize)
    dg = data_sub.add_parser("digits", help="scikit-learn's 1,797 handwritten digit scans as a folder: source (train/test by scan)")
    dg.add_argument("--out", required=True, help="output folder: images/, train.jsonl, test.jsonl")
    dg.add_argument("--image-size", type=int, default=32, help="pixels per side the 8x8 scans are upsampled to; default %(default)s")
    dg.add_argument("--seed", type=int, default=0, help="seed of the split and the questions")
    dg.set_defaults(func=_cmd_data_digits)
    return parser


def _commands(parser: argparse.ArgumentParser):
    """Every parser that runs a command (has a `func`), subcommands of subcommands included."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _commands(sub)
    if "func" in parser._defaults:
        yield parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    for command in _commands(parser):
        command.set_defaults(command_parser=command)  # errors name the flags of the command that ran
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (UserError, FileNotFoundError) as err:
        if args.debug:
            traceback.print_exc()
        print(f"error: {one_line(err, flag_names(args.command_parser))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
