"""Data: get a dataset (Kaggle or offline), check its images, find duplicates, split it once, load it."""
