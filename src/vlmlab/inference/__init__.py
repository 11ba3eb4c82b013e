"""Using a trained model: loading it with the config it was trained with, and answering prompts."""
