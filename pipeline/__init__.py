"""How datagen runs: config, planning, executors, shards, CLI. Defines no network."""
