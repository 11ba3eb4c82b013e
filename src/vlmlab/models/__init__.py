"""Model components: vision encoders, connectors, language models and their composition."""
