"""Quality: metrics, agreement between annotators, calibration of confidence, evaluation against gold, the report."""
