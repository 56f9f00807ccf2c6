"""Model cards: every final checkpoint's README.md and `unifork info` say what the checkpoint holds."""

import shutil

from unifork.checkpoint import load_model
from unifork.cli import main
from unifork.model_card import checkpoint_facts, record_evaluation, write_card


def test_card_and_info_describe_the_checkpoint(ckpt, tmp_path, capsys):
    directory = tmp_path / "ckpt"
    shutil.copytree(ckpt, directory)
    card = write_card(directory).read_text()
    header = card.split("---")[1]
    assert "library_name: unifork" in header and "pipeline_tag: any-to-any" in header and "license:" in header
    counts = load_model(directory).param_counts()
    assert checkpoint_facts(directory)["parameters"] == counts  # read from the safetensors header alone
    assert f"{counts['total'] / 1e6:.2f}M" in card and "Pipeline.from_pretrained" in card
    assert "no recipe.toml" in card  # a checkpoint saved outside the trainer says so

    record_evaluation(directory, "a test", {"vqa": 0.5, "shapeeval_exact": 0.25})
    assert "evaluation (a test): vqa 0.500, shapeeval_exact 0.250" in (directory / "README.md").read_text()
    assert main(["info", "--ckpt", str(directory)]) == 0
    out = capsys.readouterr().out
    assert f"sharing plan {load_model(directory).cfg.plan}" in out and "shapeeval_exact 0.250" in out


def test_info_on_a_folder_that_is_no_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["info", "--ckpt", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not a checkpoint directory" in err
