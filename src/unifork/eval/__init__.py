"""Evaluation on the shapes world: ShapeEval (GenEval analog), VQA, domain FID and tokenizer fidelity; suite.py runs them."""
