"""Train and evaluate a variational autoencoder (imports torch)."""
