"""Training: the model, its inputs and splits, evaluation, MLflow tracking and the registry, and the run."""
