"""Training the grounding module: on phase A's oracle shards, or on real annotated images."""
