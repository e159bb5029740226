"""Custom KServe predictor for the Rakuten classifier, speaking the V2 (Open Inference) protocol."""
