"""The main job: everything from a fresh clone to a trained, measured model, on a CPU."""

from __future__ import annotations

import json
import time
from pathlib import Path

from unifork.tokenizers.image import ImageTokenizer
from unifork.tokenizers.train_image import train_image_tokenizer
from unifork.world import export_world


def quickstart(out: str | Path = "runs/quickstart") -> dict:
    out = Path(out)
    start = time.perf_counter()
    n = export_world(out / "world", n=32, split="train", seed=0)
    print(f"[1/2] shapes world: {n} sample scenes with captions and questions in {out / 'world'}")
    tokenizer_dir = out / "tokenizer"
    if (tokenizer_dir / "report.json").is_file():
        ImageTokenizer.load(tokenizer_dir)  # fail loudly on a corrupt reuse rather than later
        tok_report = json.loads((tokenizer_dir / "report.json").read_text())
        print(f"[2/2] reusing the image tokenizer in {tokenizer_dir}")
    else:
        print("[2/2] training the text and image tokenizers (about 3 minutes on 2 CPU cores)")
        tok_report = train_image_tokenizer(tokenizer_dir)
    report = {"wall_seconds": round(time.perf_counter() - start, 1), "tokenizer": tok_report}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    print(
        f"done in {report['wall_seconds']:.0f} s: tokenizer PSNR {tok_report['psnr_heldout']:.2f} dB on held-out "
        f"scenes, codebook usage {100 * tok_report['codebook_usage']:.1f}%; report in {out / 'report.json'}"
    )
    return report
