"""gpt2clf: fine-tune a pretrained GPT-2 with custom transformer blocks for text classification."""

__version__ = "0.1.0"
