"""`datagen eval zs3`: train a downstream segmenter on real and/or synthetic data, score seen/unseen/hIoU."""
