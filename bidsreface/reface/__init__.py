"""Refacing: a 3D conditional GAN (and a template-face baseline) that fills the removed face."""
