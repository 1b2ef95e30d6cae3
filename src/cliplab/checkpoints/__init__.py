"""Checkpoint formats: cliplab's own, OpenAI's, OpenCLIP's and Hugging Face's."""
