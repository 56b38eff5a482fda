"""Speech side of speechtune: data, features, tokenizers, model families, training loop.

Knows nothing of Ray Tune (see DESIGN.md: dependencies point one way).
"""
