"""Looking at a finished dataset: open it safely, show, validate and summarise it."""
