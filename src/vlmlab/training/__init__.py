"""Training: the LightningModule of one stage, the data module, and the curriculum runner."""
