"""What runs on GPUs at serving time or as LLM batch work: behaviour model, knowledge agents, Ray Serve apps."""
