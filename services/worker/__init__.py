"""MoE inference worker: vLLM's async engine for one accelerator pool."""
