"""Evaluation on the shapes world: VQA exact match and GenEval-style judged generation."""
