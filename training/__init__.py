"""Training: data pipelines, losses, metrics and the fit CLI for stt-keras."""
