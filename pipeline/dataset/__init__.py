"""The on-disk contract: folder layout, atomic writes, shards, samples, manifest, provenance, readers."""
