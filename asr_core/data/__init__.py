"""Corpora (JSONL manifests), demo synthesis, features, tokenizer and batching."""
