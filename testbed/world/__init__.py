"""The miniature world: every pretrained part of Grounded Diffusion's setup replaced by a small model
trained here on rendered shapes (VAE, text-conditioned latent diffusion UNet, Mask R-CNN oracle), saved
in the formats a real run loads."""
