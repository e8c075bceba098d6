"""Ray Serve deployments and the small client the streaming job uses to call them."""
