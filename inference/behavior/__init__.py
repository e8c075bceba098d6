"""The implicit path: a masked-diffusion model over item tokens that infers behaviours beyond the log."""
