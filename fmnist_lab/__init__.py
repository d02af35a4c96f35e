"""fmnist_lab: hyperparameter sweeps and experiment tracking for Fashion-MNIST and MNIST."""
