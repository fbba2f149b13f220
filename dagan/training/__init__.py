"""Training: stage 1 (self-supervised depth) and stage 2 (the GAN), from one process to many GPUs and nodes."""
