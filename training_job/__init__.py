"""Training job: Rakuten data -> concatenated text+image Keras model -> MLflow run -> versioned model."""
