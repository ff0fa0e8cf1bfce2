"""Running the phases: plan the shards, load the models per worker, run A → B → C on an executor."""
