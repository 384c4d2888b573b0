"""Inference: the decision rule, test-time augmentation, prediction, Grad-CAM and export."""
