"""Sluice services: gateway, tokenizer, worker."""
