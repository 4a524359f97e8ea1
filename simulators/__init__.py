"""Site models, fault injection, scenarios with ground truth, replay, load generation."""
