"""The promotion control plane: judge a new model (gate), record the decision, move the champion, roll it
out to the InferenceService (rollout, KServe status, smoke call) or roll it back."""
