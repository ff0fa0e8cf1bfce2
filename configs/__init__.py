"""Packaged YAML configs: vocabularies (vocab/) and model presets (presets/)."""
