"""The bundled reference world model: a procedurally generated maze, a video diffusion transformer trained on it,
and autoregressive rollouts whose future frames are known exactly."""
