"""Gateway: the OpenAI-compatible HTTP API with SSE streaming."""
