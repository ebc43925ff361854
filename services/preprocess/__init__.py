"""Preprocess service: fetch, validate, decode and resize request images; store them in Redis."""
