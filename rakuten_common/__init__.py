"""Code shared by the training job and the model server: labels, preprocessing, model artifacts."""
