"""The training data modes of `datagen eval zs3` (no imports: the command's help lists them)."""

MODES = {
    "synthetic": "synthetic only: the segmenter learns from the synthetic shards alone",
    "real-seen": "real seen classes only (ZS3 baseline): unseen-class pixels of real images are ignored (255)",
    "real-seen+synthetic": "real seen classes + synthetic (paper): real images with unseen pixels ignored, "
                           "plus the synthetic shards with every class",
}
