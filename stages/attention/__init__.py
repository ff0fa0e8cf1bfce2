"""The attention labeler: masks from the UNet's cross-attention maps, with no detector and no training."""
