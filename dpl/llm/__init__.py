"""The LLM prompt source (LLaMP / the DPL release): a Llama layer, its cache, the prompt tokens."""
