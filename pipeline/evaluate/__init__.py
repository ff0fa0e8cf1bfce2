"""Evaluation: Protocol I (grounding vs oracle) and the zero-shot segmentation benchmark (ZS3)."""
