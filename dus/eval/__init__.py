"""Evaluation after training: perplexity, the contamination test, lm-evaluation-harness (H6)."""
