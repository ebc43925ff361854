"""Tokenizer service: chat templates, tokenization, context checks, routing to a pool."""
