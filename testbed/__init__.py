"""The testbed: what datagen is tested and measured on where no pretrained weights can be had; not what a
real run computes. The tiny preset's and SD 1.5's architectures with random weights from a seed
(``random_presets``), shapes with exact masks (``toy_shapes``), a VAE fitted to images (``toy_vae``) and
the miniature world trained here on rendered shapes (``world/``).

It builds on ``stages`` and never imports ``pipeline``: the pipeline finds these models in its cache
and builds them there (``pipeline.local_sources``, ``datagen world build``).
"""
