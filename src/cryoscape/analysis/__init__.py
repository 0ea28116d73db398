"""Analysis of trained models and reconstructions: latent spaces, FSC, back-projection."""
