"""What datagen computes: prompts, generation, oracle, grounding, labels. No Ray, no CLI."""
